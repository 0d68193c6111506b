"""The deployment registry without Ray: routing, its cache, pinning rules, draining, spreading."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from actors.packages import Packages, package_uris
from actors.records import Deployed, Record, from_wire, to_wire
from actors.supervision.deployments import Deployments, env_key, spread
from workflows.command import CommandEnvelope, encode_command
from workflows.errors import InvalidCommand
from workflows.testing import Echo

A = {"working_dir": "gcs://_ray_pkg_a.zip"}
B = {"working_dir": "gcs://_ray_pkg_b.zip"}


class FakePools:
    """Deployments whose code imports the types in ``code[env_key]``; counts the questions."""

    def __init__(self, code: dict[str, set[str]]) -> None:
        self.code = code
        self.envs: dict[str, Any] = {}
        self.asked: list[tuple[str, str]] = []
        self.removed: list[str] = []
        self.forgotten: list[str] = []

    async def create(self, deployment: str, runtime_env: Any) -> None:
        self.envs[deployment] = runtime_env

    async def importable(self, deployment: str, types: list[str]) -> dict[str, str | None]:
        self.asked += [(deployment, t) for t in types]
        has = self.code.get(env_key(self.envs[deployment]), set())
        return {t: None if t in has else f"No module named {t.split(':')[0]!r}" for t in types}

    async def remove(self, deployment: str) -> None:
        self.removed.append(deployment)

    async def keep(self, runtime_env: Any) -> dict[str, str]:
        return {uri: uri[6:] for uri in package_uris(runtime_env)}

    async def forget(self, blobs: list[str]) -> None:
        self.forgotten += blobs

    def counts(self, deployment: str) -> dict[str, int]:
        return {"actors": 1, "nodes": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.001  # creation order is the clock's order
        return self.now


async def registry(code: dict[str, set[str]]) -> tuple[Deployments, FakePools, list[Record], Clock]:
    pools, journal, clock = FakePools(code), [], Clock()

    async def append(records: list[Record]) -> list[Any]:
        journal.extend(records)
        return [None] * len(records)

    deployments = Deployments(pools, append, grace_s=10.0, clock=clock)
    await deployments.ensure_default(None)
    return deployments, pools, journal, clock


async def test_a_type_goes_to_the_deployment_that_imports_it_and_answers_are_cached() -> None:
    d, pools, journal, _ = await registry({env_key(None): {"pkg:T"}})
    assert await d.route([("pkg:T", None), ("pkg:T", A)]) == [d.default, d.default]
    assert await d.route([("pkg:T", None)]) == [d.default]
    assert pools.asked == [(d.default, "pkg:T")]  # one question per (deployment, type)
    assert [type(r) for r in journal] == [Deployed, Deployed]  # created, then its first type
    assert journal[-1].types == ("pkg:T",)


async def test_a_type_only_the_job_has_gets_a_deployment_of_the_jobs_runtime_env() -> None:
    d, pools, journal, _ = await registry({env_key(A): {"a:T"}})
    [dep] = await d.route([("a:T", A)])
    assert dep != d.default and pools.envs[dep] == A
    assert await d.route([("a:T", A)]) == [dep]  # reused, not created again
    assert [r.deployment for r in journal if isinstance(r, Deployed) and not r.types] == [d.default, dep]


async def test_a_type_nobody_imports_is_invalid_and_names_the_remedy() -> None:
    d, _, _, _ = await registry({})
    with pytest.raises(InvalidCommand, match=r"cluster.deploy\(runtime_env=...\).*coordinator deploy --working-dir"):
        await d.route([("nope:T", None)])


async def test_an_explicit_deploy_is_a_new_version_new_submits_go_to() -> None:
    d, _, _, _ = await registry({env_key(A): {"a:T"}, env_key(B): {"a:T"}})
    [old] = await d.route([("a:T", A)])
    new = await d.deploy(B)
    assert await d.route([("a:T", B)]) == [new.id]
    assert d.newest_for("a:T") == new.id
    assert await d.route([("a:T", A)]) == [old]  # a job with the old code keeps its own


async def test_a_deployment_with_nothing_unfinished_is_drained_after_the_grace() -> None:
    d, pools, journal, clock = await registry({env_key(A): {"a:T"}, env_key(B): {"a:T"}})
    [old] = await d.route([("a:T", A)])
    await d.deploy(B)
    await d.route([("a:T", B)])
    assert await d.drain({old: 1}) == []  # a workflow still runs there
    assert await d.drain({}) == []  # idle from now on
    clock.now += 11
    assert await d.drain({}) == [old] and pools.removed == [old]
    assert isinstance(journal[-1], Deployed) and journal[-1].retired
    assert d.default in d.by_id  # the coordinator's own is never drained


def test_spread_puts_one_actor_per_node_and_moves_them_back() -> None:
    assert spread(None, ["n1", "n2", "n3"], {}) == (["n1", "n2", "n3"], [])
    create, retire = spread(3, ["h", "x", "y"], {0: "h", 1: "h", 2: "h"})
    assert sorted(create) == ["x", "y"] and len(retire) == 2
    assert spread(None, ["h"], {0: "h", 1: "h", 2: "dead"}) == ([], [2, 1])
    assert spread(2, ["a", "b"], {0: "a", 1: "b"}) == ([], [])


def test_a_command_pickles_as_an_envelope_the_supervisor_reads_without_its_code() -> None:
    envelope = pickle.loads(pickle.dumps(Echo({"n": 1})))
    assert isinstance(envelope, CommandEnvelope) and envelope.type == "workflows.testing:Echo"
    assert encode_command(envelope, 1 << 20) == encode_command(Echo({"n": 1}), 1 << 20)
    unknown = CommandEnvelope("orders_b:PlaceOrderB", {"order_id": "b-1"}, B)
    assert encode_command(unknown, 1 << 20) == ("orders_b:PlaceOrderB", {"order_id": "b-1"})


def test_the_command_line_deploys_a_directory_and_lists_deployments() -> None:
    from cluster.cli import parser, render

    args = parser().parse_args(["deploy", "--working-dir", "code", "--namespace", "shop"])
    assert (args.cmd, args.working_dir) == ("deploy", "code")
    assert parser().parse_args(["deployments", "-o", "json"]).cmd == "deployments"
    listed = [{"id": "d-1234abcd", "runtime_env": "working_dir=gcs://_ray_pkg_a.zip", "types": ["a:T", "a:U"],
               "unfinished": 3, "actors": 2, "nodes": 2, "created_at": 0.0}]
    lines = render.deployments(listed).splitlines()
    assert lines[0].split() == ["ID", "RUNTIME_ENV", "TYPES", "UNFINISHED", "ACTORS", "NODES", "CREATED"]
    assert lines[1].split()[0] == "d-1234abcd" and "a:T, a:U" in lines[1] and "1970-01-01T00:00:00" in lines[1]


async def test_a_parked_commands_retry_prefers_another_node() -> None:
    from actors.inprocess import LocalCoordinator
    from tests.unit.local import opts
    from workflows.testing import Flaky

    c = LocalCoordinator(opts(command_actors=3, slots_per_actor=8))
    ran: dict[str, list[int]] = {}
    run = c.pool.run

    async def spy(worker: int, items: list[Any]) -> None:
        for item in items:
            ran.setdefault(item.workflow_id, []).append(worker)
        await run(worker, items)

    c.pool.run = spy  # type: ignore[method-assign]
    c.pool.node_of = lambda worker: f"node-{worker}"  # type: ignore[attr-defined]
    await c.start()
    try:
        ids = await c.core.submit_many([Flaky(failures=2) for _ in range(12)])
        assert [await c.core.result(w, 10) for w in ids] == [{"first_attempt": 1, "attempts": 3}] * 12
        assert all(len(ran[w]) == 3 for w in ids)
        assert all(a != b for w in ids for a, b in zip(ran[w], ran[w][1:], strict=False))  # never the same node twice
    finally:
        await c.close()


def test_the_journal_storage_keeps_blobs_apart_from_snapshots_and_indexes(uri: str) -> None:
    from actors.journal import open_backend

    backend = open_backend(uri)
    backend.put_blob("_ray_pkg_abc.zip", b"zip bytes")
    backend.put_blob("_ray_pkg_abc.zip", b"zip bytes")  # idempotent: stored once by name
    assert open_backend(uri).get_blob("_ray_pkg_abc.zip") == b"zip bytes"
    assert backend.snapshots() == [] and backend.indexes() == []
    backend.delete_blob("_ray_pkg_abc.zip")
    backend.delete_blob("_ray_pkg_abc.zip")
    with pytest.raises(FileNotFoundError):
        backend.get_blob("_ray_pkg_abc.zip")
    with pytest.raises(ValueError):
        backend.put_blob("../escape", b"")


async def test_a_deployment_journals_its_packages_and_types_and_a_restart_adopts_them() -> None:
    d, _, journal, _ = await registry({env_key(A): {"a:T", "a:U"}})
    [dep] = await d.route([("a:T", A)])
    await d.route([("a:T", A), ("a:U", A)])
    mine = [r for r in journal if isinstance(r, Deployed) and r.deployment == dep]
    assert [r.types for r in mine] == [(), ("a:T",), ("a:T", "a:U")]  # once per new type, none again
    assert all(r.packages == (("gcs://_ray_pkg_a.zip", "_ray_pkg_a.zip"),) for r in mine)
    assert from_wire(to_wire(mine[-1], 7)) == mine[-1]
    from actors.workflow_state import WorkflowTable

    table = WorkflowTable()
    for seq, r in enumerate(journal):
        table.apply(from_wire(to_wire(r, seq)), seq)
    again, _, _, _ = await registry({})
    again.adopt(table.deployments)
    assert again.by_id[dep].types == {"a:T", "a:U"}
    assert again.by_id[dep].packages == {"gcs://_ray_pkg_a.zip": "_ray_pkg_a.zip"}
    assert {t for x in again.listing({}) if x["id"] == dep for t in x["types"]} == {"a:T", "a:U"}


async def test_a_drained_deployment_forgets_the_packages_no_other_uses() -> None:
    shared = {"working_dir": "gcs://_ray_pkg_a.zip", "py_modules": ["gcs://_ray_pkg_m.zip"]}
    d, pools, _, clock = await registry({env_key(A): {"a:T"}, env_key(shared): {"a:T"}})
    [old] = await d.route([("a:T", shared)])
    await d.deploy(A)
    await d.route([("a:T", A)])
    await d.drain({})
    clock.now += 11
    assert await d.drain({}) == [old]
    assert pools.forgotten == ["_ray_pkg_m.zip"]  # the working_dir is still the new one's


class FakeGcs:
    def __init__(self, held: dict[str, bytes]) -> None:
        self.held = held

    def get(self, uri: str) -> bytes | None:
        return self.held.get(uri)

    def exists(self, uri: str) -> bool:
        return uri in self.held

    def put(self, uri: str, data: bytes) -> None:
        self.held[uri] = data


def test_packages_are_kept_with_the_journal_and_restored_to_a_cluster_without_them(uri: str) -> None:
    from actors.journal import open_backend

    env = {"working_dir": "gcs://_ray_pkg_a.zip", "py_modules": ["gcs://_ray_pkg_m.zip", "/local/dir"], "pip": ["x"]}
    old = Packages(lambda: open_backend(uri), FakeGcs({"gcs://_ray_pkg_a.zip": b"A", "gcs://_ray_pkg_m.zip": b"M"}))
    assert old.keep(env) == {"gcs://_ray_pkg_a.zip": "_ray_pkg_a.zip", "gcs://_ray_pkg_m.zip": "_ray_pkg_m.zip"}
    fresh = FakeGcs({})
    new = Packages(lambda: open_backend(uri), fresh)
    assert new.restore(env) == ["gcs://_ray_pkg_a.zip", "gcs://_ray_pkg_m.zip"]
    assert fresh.held == {"gcs://_ray_pkg_a.zip": b"A", "gcs://_ray_pkg_m.zip": b"M"}
    assert new.restore(env) == []  # present: nothing uploaded
    new.forget(["_ray_pkg_m.zip"])
    assert Packages(lambda: open_backend(uri), FakeGcs({})).restore(env) == ["gcs://_ray_pkg_a.zip"]
    assert Packages(lambda: open_backend(uri), FakeGcs({})).keep({"working_dir": "gcs://_ray_pkg_gone.zip"}) == {}
