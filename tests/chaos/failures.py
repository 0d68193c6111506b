"""Failures on a 3-node Ray cluster on this machine (head + 2 workers, one CPU each).

Run as a script (`python -m tests.chaos.failures ROOT`): one process holds one Ray
connection, so the test runs it in a process of its own. The scenarios run in turn
and each prints one JSON line with what it counted and how long the coordinator took
to resume (seconds from the failure to the first result of a workflow it interrupted):

- ``worker_node``: a worker node with CommandActors on it is killed mid-step;
- ``supervisor``: the SupervisorActor is killed mid-load, `result` calls in flight;
- ``rebalance``: every worker node is lost and two new ones join; where the
  CommandActor pool runs afterwards (``pool_nodes``);
- ``actor_killed``, ``retry_node`` (`tests.chaos.deploys`): a shipped deployment's
  actors killed mid-step; a retry moved off a node its service cannot reach;
- ``restart``: the whole cluster is stopped, a fresh one started on the same journal,
  with workflows of a shipped deployment parked (``shipped``: they finish on its code).

(A journal replica's node killed is `tests.chaos.multinode`.) ``COORDINATOR_CHAOS_S``
(default 0) repeats the worker-node kill, a new node replacing each one killed, until
that many seconds have passed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any

import ray
from ray.cluster_utils import Cluster

import cluster as coordinator
from cluster import Options
from tests.support import wait_for
from workflows.testing import Tracked, read_calls

HEALTH = {"health_check_period_ms": 300, "health_check_failure_threshold": 3, "health_check_timeout_ms": 300}
STEPS = 3


def start_cluster() -> tuple[Cluster, list[Any]]:
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": HEALTH})
    workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, namespace="failures", log_to_driver=False)
    wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 3, 60, "three live nodes")
    return nodes, workers


def options(root: str, name: str, **kw: Any) -> Options:
    return Options(storage=os.path.join(root, name), namespace=f"{name}-{uuid.uuid4().hex[:6]}", gateway=None,
                   command_actors=3, slots_per_actor=8, slow_retry_interval_s=0.1, jitter_s=0.02, **kw)


def node_of(handle: Any) -> str:
    return str(ray._private.state.actors(handle._actor_id.hex())["Address"]["NodeID"])


def dead_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if not n["Alive"]}


def collect(refs: dict[str, Any], timeout_s: float = 180.0) -> tuple[dict[str, Any], dict[str, float]]:
    """Results of ``refs`` (workflow id -> `result` ref) and the clock time each arrived."""
    by_ref = {r: w for w, r in refs.items()}
    pending = list(refs.values())
    results: dict[str, Any] = {}
    times: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        for ref in ready:
            w = by_ref[ref]
            times[w] = now
            try:
                results[w] = ray.get(ref)
            except Exception as exc:  # counted as lost below, with its type
                results[w] = f"error: {type(exc).__name__}: {exc}"[:300]
    for ref in pending:
        results[by_ref[ref]] = "error: no answer"
    return results, times


def counts(calls_dir: str, ids: list[str], results: dict[str, Any], kills: int = 1) -> dict[str, Any]:
    """What was lost: wrong or missing results, steps never called, and steps called
    again beyond the one each workflow may have had in flight at each kill."""
    lost = [w for w in ids if results.get(w) != [f"{w}/{i}:{i}" for i in range(STEPS)]]
    calls = Counter(read_calls(calls_dir))
    missing = {f"{w}/{i}" for w in ids for i in range(STEPS)} - set(calls)
    repeated = {w: sum(max(0, calls[f"{w}/{i}"] - 1) for i in range(STEPS)) for w in ids}
    return {"workflows": len(ids), "lost": len(lost), "lost_examples": [results.get(w) for w in lost[:3]],
            "missing_calls": len(missing), "repeated_calls": sum(repeated.values()),
            "over_repeated": sum(1 for n in repeated.values() if n > kills)}


def submit(sup: Any, calls_dir: str, n: int, sleep_s: float) -> list[str]:
    ids: list[str] = ray.get(sup.submit_many.remote([Tracked(calls_dir, steps=STEPS, sleep_s=sleep_s)
                                                     for _ in range(n)]))
    return ids


def worker_node(nodes: Cluster, workers: list[Any], root: str, chaos_s: float) -> dict[str, Any]:
    """Kill a worker node with CommandActors on it mid-step; again, with a fresh node
    each time, until ``chaos_s`` has passed."""
    for attempt in range(6):
        # Ray's "SPREAD" is best effort: the pool may sit on the head node alone (no
        # worker node to kill under it); start again until a worker node holds some.
        opts = options(root, f"worker-node-{attempt}")
        sup = coordinator.start(opts)
        handles = ray.get(sup.actors.remote())
        if {node_of(h) for h in handles["command"]} - {nodes.head_node.node_id}:
            break
        coordinator.stop(opts.namespace)
    calls = os.path.join(root, "calls-worker-node")
    os.makedirs(calls, exist_ok=True)
    ids: list[str] = []
    results: dict[str, Any] = {}
    resume: list[float] = []
    redispatched = 0
    unfinished_at_kill = 0
    rounds = 0
    hit: list[dict[str, Any]] = []
    started = time.monotonic()
    live = list(workers)
    while rounds == 0 or time.monotonic() - started < chaos_s:
        if rounds:
            live.append(nodes.add_node(num_cpus=1))
            nodes.wait_for_nodes()
        where = [node_of(h) for h in handles["command"]]
        keep = {node_of(sup), node_of(handles["log"][0])}
        victims = [n for n in live if n.node_id in where]
        # Rather a node without the supervisor and the journal; one with no CommandActor
        # only in later rounds (the pool may have gathered on the head node).
        victim = next((n for n in victims if n.node_id not in keep), victims[0] if victims else None)
        if victim is None:
            assert rounds, f"no worker node holds a CommandActor: {where}"
            victim = live[0]
        batch = submit(sup, calls, 24, 0.3)
        refs = {w: sup.result.remote(w, 180) for w in batch}
        before = len(read_calls(calls))
        wait_for(lambda b=before: len(read_calls(calls)) - b >= 24, 60, "steps to run")  # type: ignore[misc]
        done, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
        unfinished_at_kill += len(refs) - len(done)
        nodes.remove_node(victim, allow_graceful=False)
        killed_at = time.monotonic()
        live.remove(victim)
        got, times = collect(refs)
        wait_for(lambda v=victim: v.node_id in dead_nodes(), 60, "the killed node to be marked dead")  # type: ignore[misc]
        statuses = ray.get([sup.status.remote(w) for w in batch])
        again = [s["id"] for s in statuses if s["attempts"] >= 2]
        redispatched += len(again)
        interrupted = [times[w] for w in again if w in times] or [
            t for w, t in times.items() if refs[w] not in done]
        if interrupted:
            resume.append(min(interrupted) - killed_at)
        results.update(got)
        ids += batch
        rounds += 1
        hit.append({"command_actors": where.count(victim.node_id), "supervisor_or_log": victim.node_id in keep})
        print(f"worker_node round {rounds}: killed {victim.node_id[:8]} (command actors there: "
              f"{where.count(victim.node_id)}, supervisor there: {victim.node_id in keep}), "
              f"re-dispatched {len(again)}", file=sys.stderr)
        handles = ray.get(sup.actors.remote())
    out = counts(calls, ids, results)
    coordinator.stop(opts.namespace)
    return {"scenario": "worker_node", **out, "kills": rounds, "redispatched": redispatched,
            "unfinished_at_kill": unfinished_at_kill,
            "killed_node_held": hit,
            "resume_s": round(max(resume), 2) if resume else None, "resume_each_s": [round(r, 2) for r in resume]}


def supervisor(root: str) -> dict[str, Any]:
    """Kill the SupervisorActor mid-load while `result` calls are in flight."""
    opts = options(root, "supervisor")
    sup = coordinator.start(opts)
    calls = os.path.join(root, "calls-supervisor")
    os.makedirs(calls, exist_ok=True)
    ids = submit(sup, calls, 30, 0.2)
    refs = {w: sup.result.remote(w, 180) for w in ids}
    wait_for(lambda: len(read_calls(calls)) >= 30, 60, "steps to run")
    done, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
    ray.kill(sup, no_restart=False)
    killed_at = time.monotonic()
    results, times = collect(refs)
    in_flight = [w for w, r in refs.items() if r not in done]
    answered = [w for w in in_flight if w in times and isinstance(results[w], list)]
    after = [times[w] - killed_at for w in in_flight if w in times]
    out = counts(calls, ids, results)
    more = submit(sup, calls, 5, 0.0)
    late = dict(zip(more, ray.get([sup.result.remote(w, 60) for w in more]), strict=True))
    out_more = counts(calls, more, late)
    coordinator.stop(opts.namespace)
    return {"scenario": "supervisor", **out, "in_flight": len(in_flight), "in_flight_answered": len(answered),
            "lost_after": out_more["lost"], "resume_s": round(min(after), 2) if after else None}


def rebalance(nodes: Cluster, root: str) -> dict[str, Any]:
    """Lose every worker node, then add two new ones: does the CommandActor pool spread
    over them again, or does all work stay on the head node?"""
    opts = options(root, "rebalance")
    sup = coordinator.start(opts)
    handles = ray.get(sup.actors.remote())["command"]
    head = nodes.head_node.node_id
    for node in list(nodes.worker_nodes):
        nodes.remove_node(node, allow_graceful=False)

    def on_head() -> bool:
        table = [ray._private.state.actors(h._actor_id.hex()) for h in handles]
        return all(a["State"] == "ALIVE" and a["Address"]["NodeID"] == head for a in table)

    wait_for(on_head, 60, "the CommandActors to be restarted on the head node")
    for _ in range(2):
        nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 3, 60, "three live nodes")
    calls = os.path.join(root, "calls-rebalance")
    os.makedirs(calls, exist_ok=True)
    spans = 1
    ids: list[str] = []
    results: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and spans < 2:
        batch = submit(sup, calls, 8, 0.0)
        results.update(zip(batch, ray.get([sup.result.remote(w, 60) for w in batch]), strict=True))
        ids += batch
        spans = len({node_of(h) for h in ray.get(sup.actors.remote())["command"]})
        time.sleep(0.5)
    out = counts(calls, ids, results)
    coordinator.stop(opts.namespace)
    return {"scenario": "rebalance", **out, "pool_nodes": spans, "resume_s": None}


def restart(nodes: Cluster, root: str) -> tuple[Cluster, dict[str, Any]]:
    """Stop the whole cluster mid-run; start a fresh one on the same journal."""
    from tests.chaos import deploys  # it imports this module's helpers
    opts = options(root, "restart")
    sup = coordinator.start(opts)
    calls = os.path.join(root, "calls-restart")
    os.makedirs(calls, exist_ok=True)
    quick = submit(sup, calls, 10, 0.0)
    finished = dict(zip(quick, ray.get([sup.result.remote(w, 60) for w in quick]), strict=True))
    ids = submit(sup, calls, 30, 0.3)
    wait_for(lambda: len(read_calls(calls)) >= len(quick) * STEPS + 30, 60, "steps to run")
    open_at_stop = [s["id"] for s in ray.get([sup.status.remote(w) for w in ids]) if s["state"] != "completed"]
    parked = deploys.park(sup, opts.namespace, root)  # a shipped deployment's workflows, parked
    ray.shutdown()
    for node in list(nodes.worker_nodes):
        nodes.remove_node(node, allow_graceful=False)
    nodes.remove_node(nodes.head_node, allow_graceful=False)
    up = time.monotonic()
    nodes, _ = start_cluster()
    cluster_s = time.monotonic() - up
    in_gcs_before = deploys.package_exists(parked.uri)
    started = time.monotonic()
    sup = coordinator.start(opts)
    start_s = time.monotonic() - started
    refs = {w: sup.result.remote(w, 180) for w in quick + ids}
    results, times = collect(refs)
    resumed = [times[w] - started for w in open_at_stop if w in times]
    out = counts(calls, quick + ids, results)
    shipped = deploys.finish_parked(parked, sup, opts.namespace, in_gcs_before, started)
    coordinator.stop(opts.namespace)
    return nodes, {"scenario": "restart", **out, "unfinished_at_stop": len(open_at_stop), "shipped": shipped,
                   "finished_answered": sum(results[w] == finished[w] for w in quick), "finished": len(quick),
                   "cluster_start_s": round(cluster_s, 2), "coordinator_start_s": round(start_s, 2),
                   "resume_s": round(min(resumed), 2) if resumed else None,
                   "all_done_s": round(max(resumed), 2) if resumed else None}


def main(root: str) -> None:
    from tests.chaos import deploys  # it imports this module's helpers
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    chaos_s = float(os.environ.get("COORDINATOR_CHAOS_S", "0"))
    nodes, workers = start_cluster()
    try:
        # rebalance leaves three live nodes again, as the deployments' scenarios need
        for run in (lambda: worker_node(nodes, workers, root, chaos_s), lambda: supervisor(root),
                    lambda: rebalance(nodes, root), lambda: deploys.actor_killed(root),
                    lambda: deploys.retry_node(nodes, root)):
            print(json.dumps(run()), flush=True)
        nodes, report = restart(nodes, root)
        print(json.dumps(report), flush=True)
    finally:
        ray.shutdown()
        nodes.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
