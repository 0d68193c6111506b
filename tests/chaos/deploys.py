"""Deployments on a 3-node Ray cluster on this machine (head + 2 workers, one CPU each).

Run as a script (`python -m tests.chaos.deploys ROOT`), in a process of its own (one
process holds one Ray connection). The code under test ships the way a job's does: a
directory uploaded as a ``gcs://`` package, given to `cluster.deploy`; this process
never imports it (it submits plain envelopes). Each scenario prints one JSON line:

- ``actor_killed``: the CommandActors of that deployment are killed mid-step; its
  workflows finish on recreated actors of the same deployment;
- ``retry_node``: a service reachable from one node only (the step fails with
  `Delayed` on node X); each parked workflow's retry runs on another node;
- ``restart``: the whole cluster is stopped with workflows of the deployment parked,
  and a fresh one started on the same journal: its package is uploaded again from
  the journal's storage and they finish on their own code.

The test (`tests.chaos.test_cluster`) runs the first two, and the third inside the
whole-cluster restart of `tests.chaos.failures`, on that script's cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import ray
from ray.cluster_utils import Cluster
from ray.exceptions import GetTimeoutError, RayActorError

import cluster as coordinator
from tests.chaos.failures import collect, options, start_cluster
from tests.support import wait_for
from workflows.command import CommandEnvelope

CODE = '''
import asyncio, json, os, time
from dataclasses import dataclass

import ray
from workflows import Command, Context, Delayed

VERSION = "shipped-{version}"


def where():
    ctx = ray.get_runtime_context()
    return {{"node": ctx.get_node_id(), "actor": ctx.get_actor_name(), "pid": os.getpid(), "t": time.time()}}


def note(directory, entry):
    fd = os.open(os.path.join(directory, "notes.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\\n").encode())
    finally:
        os.close(fd)


@dataclass
class Steps(Command):
    dir: str
    steps: int = 4
    sleep_s: float = 0.3

    async def exec(self, ctx: Context):
        values = [await ctx.step(f"svc{{i}}", self.call, ctx.key(), i) for i in range(self.steps)]
        return {{"version": VERSION, "values": values, "actor": where()["actor"], "attempt": ctx.attempt}}

    async def call(self, key, i):
        note(self.dir, {{"key": key, **where()}})
        await asyncio.sleep(self.sleep_s)
        return f"{{key}}:{{i}}"


@dataclass
class NodeBound(Command):
    dir: str
    blocked_node: str

    async def exec(self, ctx: Context):
        here = where()
        note(self.dir, {{"w": ctx.workflow_id, "attempt": ctx.attempt, **here}})
        if here["node"] == self.blocked_node:
            raise Delayed("the service is unreachable from this node")
        return await ctx.step("svc", lambda: {{"node": here["node"], "attempt": ctx.attempt}})


@dataclass
class Gated(Command):
    dir: str
    flag: str

    async def exec(self, ctx: Context):
        first = await ctx.step("before", self.call, ctx.key(), 0)
        if not os.path.exists(self.flag):
            raise Delayed("waiting for the flag")
        second = await ctx.step("after", self.call, ctx.key(), 1)
        return {{"version": VERSION, "values": [first, second], "actor": where()["actor"], "file": __file__}}

    async def call(self, key, i):
        note(self.dir, {{"key": key, **where()}})
        return f"{{key}}:{{i}}"
'''
MODULE = "shipped"


def ship(root: str, version: str) -> str:
    """The test code of version ``version``, shipped: its ``gcs://`` URI."""
    return ship_code(root, MODULE, CODE.format(version=version), version)


def ship_code(root: str, module: str, text: str, version: str = "") -> str:
    """Write ``module`` to a directory of its own and upload it as a job does: its ``gcs://`` URI."""
    from ray._private.runtime_env.packaging import get_uri_for_directory, upload_package_if_needed

    code = os.path.join(root, f"code-{module}-{version}")
    os.makedirs(code, exist_ok=True)
    with open(os.path.join(code, f"{module}.py"), "w") as f:
        f.write(textwrap.dedent(text))
    uri = str(get_uri_for_directory(code, include_gitignore=True))
    upload_package_if_needed(uri, tempfile.mkdtemp(dir=root), code, include_gitignore=True)
    return uri


def notes(directory: str) -> list[dict[str, Any]]:
    path = os.path.join(directory, "notes.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def envelope(name: str, **fields: Any) -> CommandEnvelope:
    return CommandEnvelope(f"{MODULE}:{name}", fields, None)


def actors_of(namespace: str, deployment: str) -> list[Any]:
    """The deployment's named actors; one ended between the listing and its lookup (a respread
    retired it) is left out."""
    prefix = f"command-{deployment}-"
    handles = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == namespace and a["name"].startswith(prefix):
            with contextlib.suppress(ValueError):
                handles.append(ray.get_actor(a["name"], namespace=namespace))
    return handles


def nodes_of(namespace: str, deployment: str) -> set[str]:
    """The nodes the deployment's live actors run on (one retired meanwhile is left out)."""
    found = set()
    for handle in actors_of(namespace, deployment):
        with contextlib.suppress(RayActorError, GetTimeoutError):
            found.add(ray.get(handle.node.remote(), timeout=10))
    return found


def workdir(root: str, name: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path


def actor_killed(root: str) -> dict[str, Any]:
    """Kill every CommandActor of a shipped deployment while its workflows are mid-step."""
    opts = options(root, "actor-killed")
    sup = coordinator.start(opts)
    dep = coordinator.deploy({"working_dir": ship(root, "a")}, namespace=opts.namespace)["id"]
    calls = workdir(root, "calls-actor-killed")
    ids: list[str] = ray.get(sup.submit_many.remote([envelope("Steps", dir=calls) for _ in range(12)]))
    refs = {w: sup.result.remote(w, 180) for w in ids}
    wait_for(lambda: len(notes(calls)) >= 18, 60, "steps to run")
    killed = actors_of(opts.namespace, dep)
    pids_before = {n["pid"] for n in notes(calls)}
    for handle in killed:
        ray.kill(handle, no_restart=False)
    killed_at, killed_wall = time.monotonic(), time.time()
    results, times = collect(refs)
    keys = Counter(n["key"] for n in notes(calls))
    expected = {w: [f"{w}/{i}:{i}" for i in range(4)] for w in ids}
    lost = [w for w in ids if not isinstance(results[w], dict) or results[w]["values"] != expected[w]
            or results[w]["version"] != "shipped-a"]
    on_dep = sum(isinstance(r, dict) and r["actor"].startswith(f"command-{dep}-") for r in results.values())
    late = [n for n in notes(calls) if n["pid"] not in pids_before]
    repeated = {w: sum(keys[f"{w}/{i}"] - 1 for i in range(4) if keys[f"{w}/{i}"]) for w in ids}
    listed = {d["id"]: d for d in coordinator.deployments(opts.namespace)}
    errors = [s["error"] for s in ray.get([sup.status.remote(w) for w in lost[:2]])]
    over = [w for w, n in repeated.items() if n > 1]
    detail = {w[-6:]: [(n["key"][-2:], n["actor"][-3:], n["pid"], round(n["t"] - killed_wall, 2))
                       for n in notes(calls) if n["key"].startswith(w)] for w in over[:3]}
    coordinator.stop(opts.namespace)
    return {"scenario": "actor_killed", "errors": errors, "over_detail": detail, "workflows": len(ids),
            "killed_actors": len(killed), "lost": len(lost),
            "lost_examples": [results[w] for w in lost[:3]], "on_deployment": on_dep,
            "retried": sum(isinstance(r, dict) and r["attempt"] >= 2 for r in results.values()),
            "steps_on_new_actors": len(late), "new_actor_pids": len({n["pid"] for n in late}),
            "missing_calls": sum(1 for w in ids for i in range(4) if not keys[f"{w}/{i}"]),
            "repeated_calls": sum(repeated.values()), "over_repeated": sum(1 for n in repeated.values() if n > 1),
            "types_listed": listed[dep]["types"],
            "resume_s": round(min(times.values()) - killed_at, 2) if times else None}


def retry_node(nodes: Cluster, root: str) -> dict[str, Any]:
    """A service unreachable from one worker node: the attempts there are parked, and
    their retries run on another node."""
    opts = options(root, "retry-node")
    sup = coordinator.start(opts)
    dep = coordinator.deploy({"working_dir": ship(root, "r")}, namespace=opts.namespace)["id"]
    wait_for(lambda: len(nodes_of(opts.namespace, dep)) == 3, 60, "the deployment's actors on three nodes")
    blocked = sorted(n.node_id for n in nodes.worker_nodes)[0]
    calls = workdir(root, "calls-retry-node")
    ids: list[str] = []
    results: dict[str, Any] = {}
    for _ in range(5):  # until enough first attempts landed on the blocked node
        batch = ray.get(sup.submit_many.remote([envelope("NodeBound", dir=calls, blocked_node=blocked)
                                                for _ in range(12)]))
        results.update(zip(batch, ray.get([sup.result.remote(w, 120) for w in batch]), strict=True))
        ids += batch
        firsts = [n for n in notes(calls) if n["attempt"] == 1 and n["node"] == blocked]
        if len(firsts) >= 3:
            break
    attempts: dict[str, list[dict[str, Any]]] = {}
    for n in sorted(notes(calls), key=lambda n: (n["w"], n["attempt"])):
        attempts.setdefault(n["w"], []).append(n)
    hit = [w for w in ids if attempts[w][0]["node"] == blocked]
    moved = [w for w in hit if len(attempts[w]) >= 2 and attempts[w][1]["node"] != blocked]
    coordinator.stop(opts.namespace)
    return {"scenario": "retry_node", "workflows": len(ids), "blocked_node": blocked[:12],
            "completed": sum(isinstance(r, dict) and r["node"] != blocked for r in results.values()),
            "first_on_blocked": len(hit), "retried_elsewhere": len(moved),
            "attempts_on_blocked_after_first": sum(a["node"] == blocked for w in ids for a in attempts[w][1:]),
            "attempt_nodes": {w[-6:]: [a["node"][:8] for a in attempts[w]] for w in hit},
            "off_deployment": sum(not a["actor"].startswith(f"command-{dep}-") for w in ids for a in attempts[w]),
            "lost": sum(not isinstance(results[w], dict) for w in ids), "resume_s": None}


@dataclass
class Parked:
    """Workflows of a shipped deployment, parked until ``flag`` exists."""

    uri: str
    deployment: str
    ids: list[str]
    calls: str
    flag: str


def park(sup: Any, namespace: str, root: str) -> Parked:
    """Ship and deploy the test code and park a few of its workflows (before a restart)."""
    uri = ship(root, "v")
    dep = coordinator.deploy({"working_dir": uri}, namespace=namespace)["id"]
    calls = workdir(root, "calls-deploy-restart")
    flag = os.path.join(root, "restart-flag")
    ids: list[str] = ray.get(sup.submit_many.remote([envelope("Gated", dir=calls, flag=flag) for _ in range(6)]))
    wait_for(lambda: all(s["state"] == "delayed" for s in ray.get([sup.status.remote(w) for w in ids])), 60,
             "the workflows to park")
    return Parked(uri, dep, ids, calls, flag)


def package_exists(uri: str) -> bool:
    from ray._private.runtime_env.packaging import package_exists as exists

    return bool(exists(uri))


def finish_parked(parked: Parked, sup: Any, namespace: str, in_gcs_before: bool, started: float) -> dict[str, Any]:
    """After the restart (the coordinator started at ``started``): let the parked
    workflows go on, and count whether they finished on the shipped code."""
    listed = {d["id"]: d for d in coordinator.deployments(namespace)}
    open(parked.flag, "w").close()
    ids, dep = parked.ids, parked.deployment
    results, times = collect({w: sup.result.remote(w, 120) for w in ids})
    keys = Counter(n["key"] for n in notes(parked.calls))
    good = [w for w in ids if isinstance(results[w], dict) and results[w]["version"] == "shipped-v"
            and results[w]["actor"].startswith(f"command-{dep}-")
            and results[w]["values"] == [f"{w}/0:0", f"{w}/1:1"]]
    return {"workflows": len(ids), "lost": len(ids) - len(good),
            "lost_examples": [results[w] for w in ids if w not in good][:3],
            "package_in_new_gcs_before_start": in_gcs_before, "package_in_new_gcs_after": package_exists(parked.uri),
            "deployment_listed": dep in listed, "types_listed": listed.get(dep, {}).get("types"),
            "first_steps_repeated": sum(keys[f"{w}/0"] - 1 for w in ids),
            "resume_s": round(min(times.values()) - started, 2) if times else None}


def restart(nodes: Cluster, root: str) -> tuple[Cluster, dict[str, Any]]:
    """Workflows of a shipped deployment parked; the whole cluster stopped and a fresh
    one started on the same journal; they finish on the shipped code. (The test runs
    `park` and `finish_parked` inside `tests.chaos.failures`'s own restart.)"""
    opts = options(root, "deploy-restart")
    parked = park(coordinator.start(opts), opts.namespace, root)
    ray.shutdown()
    for node in list(nodes.worker_nodes):
        nodes.remove_node(node, allow_graceful=False)
    nodes.remove_node(nodes.head_node, allow_graceful=False)
    nodes, _ = start_cluster()
    before = package_exists(parked.uri)
    started = time.monotonic()
    sup = coordinator.start(opts)
    out = {"scenario": "restart", **finish_parked(parked, sup, opts.namespace, before, started)}
    coordinator.stop(opts.namespace)
    return nodes, out


def main(root: str, only: str = "actor_killed,retry_node,restart") -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    nodes, _ = start_cluster()
    try:
        if "actor_killed" in only:
            print(json.dumps(actor_killed(root)), flush=True)
        if "retry_node" in only:
            print(json.dumps(retry_node(nodes, root)), flush=True)
        if "restart" in only:
            nodes, report = restart(nodes, root)
            print(json.dumps(report), flush=True)
    finally:
        ray.shutdown()
        nodes.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
