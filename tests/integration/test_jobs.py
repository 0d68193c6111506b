"""Jobs against a real `ray start --head`: a coordinator started by one job is used by
jobs from other working directories, each with command types of its own.

The head is its own Ray instance (own temp dir and ports), ended by process id; this
pytest process never attaches to it: everything travels over the job API.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.rayhead import JobResult, RayHead

pytestmark = pytest.mark.ray

ORDERS_A = '''
from dataclasses import dataclass
from workflows import Command, Context


@dataclass
class PlaceOrderA(Command):
    order_id: str
    items: int

    async def exec(self, ctx: Context):
        stock = await ctx.step("stock", lambda: {"reserved": self.items})
        paid = await ctx.step("payments", lambda: {"charged": 10 * self.items})
        return {"order": self.order_id, "module": __name__, **stock, **paid}
'''

DRIVER_A = '''
import json, sys
import ray
import cluster
from cluster import Options
from orders_a import PlaceOrderA

namespace, storage = sys.argv[1:3]
sup = cluster.start(Options(namespace=namespace, storage=storage, gateway=None, command_actors=1,
                            slow_retry_interval_s=0.1))
wid = ray.get(sup.submit.remote(PlaceOrderA("a-1", 3)))
print(json.dumps({"id": wid, "result": ray.get(sup.result.remote(wid, 60))}))
'''

ORDERS_B = '''
from dataclasses import dataclass
from workflows import Command, Context


@dataclass
class PlaceOrderB(Command):
    order_id: str

    async def exec(self, ctx: Context):
        shipped = await ctx.step("shipping", lambda: {"shipped": self.order_id})
        return {"module": __name__, **shipped}
'''

DRIVER_B = '''
import json, sys
import ray
import cluster
from orders_b import PlaceOrderB

sup = cluster.connect(namespace=sys.argv[1])
wid = ray.get(sup.submit.remote(PlaceOrderB("b-1")))
print(json.dumps({"id": wid, "result": ray.get(sup.result.remote(wid, 60))}))
'''

DRIVER_PACKAGED = '''
import json, sys
import ray
import cluster
from workflows.examples import Echo
from workflows.testing import Tracked, read_calls

namespace, calls = sys.argv[1:3]
sup = cluster.connect(namespace=namespace)
ids = ray.get(sup.submit_many.remote([Echo({"n": 1}), Tracked(calls, steps=2)]))
results = ray.get([sup.result.remote(w, 60) for w in ids])
print(json.dumps({"ids": ids, "results": results, "calls": read_calls(calls)}))
'''


def _dir(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def _answer(job: JobResult) -> Any:
    assert job.status == "SUCCEEDED", f"job {job.job_id} ended {job.status}; its logs:\n{job.logs[-6000:]}"
    return json.loads(job.last_line())


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    h = RayHead(num_cpus=2).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def started(head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, JobResult]:
    """Job 1, from working dir A: starts the coordinator and runs a type only A has."""
    root = tmp_path_factory.mktemp("jobs")
    namespace = f"jobs-{uuid.uuid4().hex[:6]}"
    work = _dir(root / "a", {"orders_a.py": ORDERS_A, "driver_a.py": DRIVER_A})
    return namespace, head.submit(work, "driver_a.py", [namespace, str(root / "journal")])


def test_a_job_starts_the_coordinator_and_runs_its_own_command_type(started: tuple[str, JobResult]) -> None:
    _, job = started
    answer = _answer(job)
    assert answer["result"] == {"order": "a-1", "module": "orders_a", "reserved": 3, "charged": 30}


def test_a_job_with_only_packaged_types_uses_the_running_coordinator(
        head: RayHead, started: tuple[str, JobResult], tmp_path: Path) -> None:
    namespace, first = started
    _answer(first)
    calls = tmp_path / "calls"
    calls.mkdir()
    work = _dir(tmp_path / "c", {"driver_c.py": DRIVER_PACKAGED})
    answer = _answer(head.submit(work, "driver_c.py", [namespace, str(calls)]))
    _, tracked = answer["ids"]
    assert answer["results"] == [{"n": 1}, [f"{tracked}/0:0", f"{tracked}/1:1"]]
    assert sorted(answer["calls"]) == [f"{tracked}/0", f"{tracked}/1"]


def test_a_second_job_submits_a_command_type_of_its_own(head: RayHead, started: tuple[str, JobResult],
                                                        tmp_path: Path) -> None:
    namespace, first = started
    _answer(first)
    work = _dir(tmp_path / "b", {"orders_b.py": ORDERS_B, "driver_b.py": DRIVER_B})
    job = head.submit(work, "driver_b.py", [namespace])
    if job.status != "SUCCEEDED":
        print(job.logs[-6000:])
    answer = _answer(job)
    assert answer["result"] == {"module": "orders_b", "shipped": "b-1"}


def test_the_session_ray_instance_lives_beside_the_head(ray_session: str, head: RayHead) -> None:
    import ray

    assert ray_session != head.gcs_address
    assert ray.get_runtime_context().gcs_address == ray_session  # this process is not attached to the head

    @ray.remote
    def ping() -> str:
        return "pong"

    assert ray.get(ping.remote(), timeout=60) == "pong"


VERSIONED = '''
import os
from dataclasses import dataclass
from workflows import Command, Context, Delayed

VERSION = {version}


@dataclass
class Versioned(Command):
    flag: str

    async def exec(self, ctx: Context):
        if VERSION == 1 and not os.path.exists(self.flag):
            raise Delayed("waiting for the flag")
        return await ctx.step("version", lambda: {{"version": VERSION, "attempt": ctx.attempt}})
'''

DRIVER_V1 = '''
import json, sys
import ray
import cluster
from versioned import Versioned

namespace, flag = sys.argv[1:3]
sup = cluster.connect(namespace=namespace)
ids = ray.get(sup.submit_many.remote([Versioned(flag) for _ in range(3)]))
print(json.dumps({"ids": ids, "states": [ray.get(sup.status.remote(w))["state"] for w in ids]}))
'''

DRIVER_V2 = '''
import json, pathlib, sys
import ray
import cluster
from versioned import Versioned

namespace, flag, old = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sup = cluster.connect(namespace=namespace)
deployed = cluster.deploy(namespace=namespace)
new = ray.get(sup.submit.remote(Versioned(flag)))
fresh = ray.get(sup.result.remote(new, 60))
pathlib.Path(flag).touch()
results = ray.get([sup.result.remote(w, 60) for w in old])
print(json.dumps({"deployed": deployed["id"], "new": fresh, "old": results,
                  "deployments": cluster.deployments(namespace)}))
'''


def test_a_new_version_is_deployed_while_the_old_ones_are_parked(head: RayHead, started: tuple[str, JobResult],
                                                                  tmp_path: Path) -> None:
    namespace, first = started
    _answer(first)
    flag = str(tmp_path / "flag")
    v1 = _dir(tmp_path / "v1", {"versioned.py": VERSIONED.format(version=1), "driver.py": DRIVER_V1})
    parked = _answer(head.submit(v1, "driver.py", [namespace, flag]))
    v2 = _dir(tmp_path / "v2", {"versioned.py": VERSIONED.format(version=2), "driver.py": DRIVER_V2})
    answer = _answer(head.submit(v2, "driver.py", [namespace, flag, ",".join(parked["ids"])]))
    assert answer["new"]["version"] == 2  # new submits go to the new version
    assert [r["version"] for r in answer["old"]] == [1, 1, 1]  # the parked ones finish on the code they started on
    assert all(r["attempt"] >= 2 for r in answer["old"])
    listed = {d["id"]: d for d in answer["deployments"]}
    assert listed[answer["deployed"]]["types"] == ["versioned:Versioned"]
    assert sum("versioned:Versioned" in d["types"] for d in listed.values()) == 2


DRIVER_UNKNOWN = '''
import json, sys
import ray
import cluster
from workflows.command import CommandEnvelope
from workflows.errors import InvalidCommand

sup = cluster.connect(namespace=sys.argv[1])
try:
    ray.get(sup.submit.remote(CommandEnvelope("nowhere:Nothing", {}, None)))
    print(json.dumps({"error": None}))
except InvalidCommand as exc:
    print(json.dumps({"error": str(exc)}))
'''


def test_a_type_nobody_can_import_is_invalid_with_the_remedy(head: RayHead, started: tuple[str, JobResult],
                                                             tmp_path: Path) -> None:
    namespace, first = started
    _answer(first)
    work = _dir(tmp_path / "u", {"driver.py": DRIVER_UNKNOWN})
    error = _answer(head.submit(work, "driver.py", [namespace]))["error"]
    assert error is not None and "coordinator deploy --working-dir" in error and "cluster.deploy" in error
