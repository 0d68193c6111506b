"""A 3-node Ray cluster on this machine; a journal replica's node is killed mid-run.

Run as a script (`python -m tests.chaos.multinode STORAGE_DIR`): the test runs it in a
process of its own, since one process holds one Ray connection. Prints one JSON line
with what it counted.
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
from tests.chaos.failures import collect
from tests.support import wait_for
from workflows.testing import Tracked, read_calls

HEALTH = {"health_check_period_ms": 300, "health_check_failure_threshold": 3, "health_check_timeout_ms": 300}


def main(root: str) -> dict[str, Any]:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": HEALTH})
    workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, namespace="multinode", log_to_driver=False)
    calls = os.path.join(root, "calls")
    os.makedirs(calls, exist_ok=True)
    options = Options(storage=os.path.join(root, "journal"), namespace=f"mn-{uuid.uuid4().hex[:6]}", replicas=3,
                      replica_timeout_s=5.0, gateway=None, slots_per_actor=8, slow_retry_interval_s=0.1)
    sup = coordinator.start(options)
    logs = [ray.get_actor(f"log-{i}", namespace=options.namespace) for i in range(3)]
    where = [ray.get(h.info.remote())["node"] for h in logs]
    head = nodes.head_node.node_id
    assert where[0] == head, "the leader replica lives on the head node"
    victim_replica = next(i for i in (1, 2) if where[i] != head)
    victim = next(n for n in workers if n.node_id == where[victim_replica])
    ids = ray.get(sup.submit_many.remote([Tracked(calls, steps=3, sleep_s=0.2) for _ in range(30)]))
    refs = {w: sup.result.remote(w, 120) for w in ids}
    wait_for(lambda: len(read_calls(calls)) >= 20, 60, "steps to run")
    done, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
    nodes.remove_node(victim, allow_graceful=False)
    killed_at = time.monotonic()
    got, times = collect(refs)
    wait_for(lambda: any(not n["Alive"] for n in ray.nodes()), 60, "the node to be marked dead")
    # Resumed: the first result, after the kill, of a workflow not finished before it.
    resumed = [t - killed_at for w, t in times.items() if refs[w] not in done]
    results = [got[w] for w in ids]
    lost = [w for w, r in zip(ids, results, strict=True) if r != [f"{w}/{i}:{i}" for i in range(3)]]
    more = ray.get(sup.submit_many.remote([Tracked(calls, steps=3) for _ in range(10)]))
    after = ray.get([sup.result.remote(w, 120) for w in more])
    lost += [w for w, r in zip(more, after, strict=True) if r != [f"{w}/{i}:{i}" for i in range(3)]]
    # A new node: the replica is placed again and catches up from the leader.
    nodes.add_node(num_cpus=1)
    extra = ray.get(sup.submit.remote(Tracked(calls, steps=1)))
    ray.get(sup.result.remote(extra, 120))
    leader_end = ray.get(logs[0].info.remote())["next_seq"]
    caught_up = wait_for(lambda: ray.get(logs[victim_replica].info.remote(), timeout=10)["next_seq"] >= leader_end,
                         120, "the replaced replica to catch up")
    keys = Counter(read_calls(calls))
    missing = {f"{w}/{i}" for w in ids + more for i in range(3)} - set(keys)
    # No journaled step is called again: only the one a workflow had in flight at the kill.
    over_repeated = sum(1 for w in ids + more if sum(keys[f"{w}/{i}"] - 1 for i in range(3) if keys[f"{w}/{i}"]) > 1)
    coordinator.stop(options.namespace)
    ray.shutdown()
    nodes.shutdown()
    return {"workflows": len(ids) + len(more), "lost": len(lost), "missing_calls": len(missing),
            "killed_replica": victim_replica, "caught_up": bool(caught_up),
            "over_repeated": over_repeated, "resume_s": round(min(resumed), 2) if resumed else None}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
