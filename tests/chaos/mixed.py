"""Mixed chaos on a 3-node Ray cluster on this machine (head + 2 workers, one CPU each).

Run as a script (`python -m tests.chaos.mixed ROOT`), in a process of its own. A
coordinator with 3 journal replicas runs a few hundred sagas across two deployments
(two code packages shipped as a job ships them), while random kills, seeded and
printed, hit a worker node (a fresh node joins after each), the SupervisorActor, a
CommandActor and a follower journal replica, for ``COORDINATOR_CHAOS_S`` seconds
(at least `WINDOW_S`). Then it counts, from the answers, the journal's records and
the services' ledgers:

- every acknowledged submit has exactly one end in the journal, ``completed``;
- each step index has at most one journaled outcome;
- every `result` (asked right after the submit, so through the kills) is answered
  with the value the services' ledgers hold for its keys;
- the ledgers apply each idempotency key once, and hold no key whose step the
  journal lacks.

Prints one JSON line: the counts, the kills by kind, lost and duplicates, and per
kind the time to resume (from the kill to the first end of a workflow it found
unfinished).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

import ray
from ray.cluster_utils import Cluster

import cluster as coordinator
from actors.journal.tools import dump
from cluster import Options
from tests.chaos.deploys import ship_code
from tests.chaos.failures import start_cluster
from tests.support import wait_for
from workflows.command import CommandEnvelope

WINDOW_S = 60.0
WORKFLOWS = 400
STEP_S = 0.6
"""Each step's service call takes this long: a few dozen workflows are mid-step at every kill."""
STEPS = 3
KINDS = ("node", "supervisor", "command", "replica")

SAGA = '''
import asyncio, os, uuid
from dataclasses import dataclass

from workflows import Command, Context

SERVICES = ("stock", "payments", "shipping")


def log_line(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


def apply(root, service, key):
    """An idempotent service: the first call under a key applies it (a fresh token, kept
    under the key, created atomically by a link); every later call answers that token."""
    folder = os.path.join(root, service)
    os.makedirs(folder, exist_ok=True)
    log_line(os.path.join(root, "calls.log"), key)
    path = os.path.join(folder, key.replace("/", "_"))
    token = uuid.uuid4().hex
    tmp = f"{path}.{token}.tmp"
    with open(tmp, "w") as f:
        f.write(token)
    try:
        os.link(tmp, path)
        log_line(os.path.join(root, "applied.log"), f"{key} {token}")
    except FileExistsError:
        with open(path) as f:
            token = f.read()
    finally:
        os.unlink(tmp)
    return token


@dataclass
class Saga(Command):
    root: str
    sleep_s: float = 0.15

    async def exec(self, ctx: Context):
        tokens = []
        for service in SERVICES:
            tokens.append(await ctx.step(service, self.call, service, ctx.key()))
        return {"module": __name__, "tokens": tokens}

    async def call(self, service, key):
        token = apply(self.root, service, key)
        await asyncio.sleep(self.sleep_s)  # a kill meanwhile: the step is called again, answered the same token
        return token
'''


class Watcher(threading.Thread):
    """Records when each `result` ref answers, as it answers."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.refs: dict[Any, str] = {}
        self.done: dict[str, float] = {}
        self.stop = False

    def add(self, refs: dict[str, Any]) -> None:
        with self.lock:
            self.refs.update({r: w for w, r in refs.items()})

    def run(self) -> None:
        while not self.stop:
            with self.lock:
                pending = list(self.refs)
            if not pending:
                time.sleep(0.05)
                continue
            ready, _ = ray.wait(pending, num_returns=min(len(pending), 50), timeout=0.1, fetch_local=False)
            now = time.monotonic()
            with self.lock:
                for ref in ready:
                    self.done[self.refs.pop(ref)] = now


class Chaos:
    def __init__(self, nodes: Cluster, root: str, seed: int, window_s: float) -> None:
        self.nodes = nodes
        self.root = root
        self.rng = random.Random(seed)
        self.window_s = window_s
        self.opts = Options(storage=os.path.join(root, "journal"), namespace=f"mixed-{uuid.uuid4().hex[:6]}",
                            gateway=None, replicas=3, replica_timeout_s=5.0, slots_per_actor=16, max_cmds=150,
                            slow_retry_interval_s=0.1, jitter_s=0.02, admission_timeout_s=60.0)
        self.ledger = os.path.join(root, "ledger")
        os.makedirs(self.ledger, exist_ok=True)
        self.watcher = Watcher()
        self.results: dict[str, Any] = {}
        self.acked: dict[str, str] = {}
        self.kills: list[dict[str, Any]] = []

    def start(self) -> None:
        self.sup = coordinator.start(self.opts)
        self.deps = [coordinator.deploy({"working_dir": ship_code(self.root, f"saga_{m}", SAGA)},
                                        namespace=self.opts.namespace)["id"] for m in ("a", "b")]
        self.watcher.start()

    def submit(self, ids: list[str]) -> Any:
        fields = {"root": self.ledger, "sleep_s": STEP_S}
        cmds = [CommandEnvelope(f"saga_{w.split('-')[1]}:Saga", fields, None) for w in ids]
        return self.sup.submit_many.remote(cmds, ids)

    def kill(self, kind: str) -> dict[str, Any]:
        ns = self.opts.namespace
        named = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns)
        target = ""
        if kind == "node":
            victim = self.rng.choice(sorted(self.nodes.worker_nodes, key=lambda n: n.node_id))
            target = victim.node_id[:12]
            self.nodes.remove_node(victim, allow_graceful=False)
        else:
            name = {"supervisor": lambda: "supervisor",
                    "command": lambda: self.rng.choice([n for n in named if n.startswith(
                        tuple(f"command-{d}-" for d in self.deps))]),
                    "replica": lambda: self.rng.choice(["log-1", "log-2"])}[kind]()
            target = name
            try:
                ray.kill(ray.get_actor(name, namespace=ns), no_restart=False)
            except ValueError:  # not there right now (being re-placed after a node kill)
                target += " (absent)"
        at = time.monotonic()
        if kind == "node":
            self.nodes.add_node(num_cpus=1)  # a fresh node: three again, for the replicas' STRICT_SPREAD
        with self.watcher.lock:
            unfinished = [w for w in self.acked if w not in self.watcher.done]
        print(f"kill {len(self.kills) + 1}: {kind} {target} at {at - self.t0:.1f} s", file=sys.stderr, flush=True)
        return {"kind": kind, "target": target, "at": at, "unfinished": unfinished}

    def run(self) -> dict[str, Any]:
        self.t0 = time.monotonic()
        ids = [f"mx-{'ab'[i % 2]}-{i:05d}" for i in range(WORKFLOWS)]
        batch = 10
        per_batch_s = (self.window_s * 0.8) / (WORKFLOWS / batch)
        next_batch = self.t0
        order: list[str] = []
        next_kill = self.t0 + 5.0
        in_flight: dict[Any, list[str]] = {}
        retry: list[list[str]] = []
        end = self.t0 + self.window_s
        while time.monotonic() < end or ids or retry or in_flight:
            now = time.monotonic()
            if now > end + 240:
                raise TimeoutError(f"submits not acknowledged: {sum(map(len, in_flight.values()))} in flight")
            if (ids or retry) and now >= next_batch:
                chunk = retry.pop(0) if retry else [ids.pop(0) for _ in range(min(batch, len(ids)))]
                in_flight[self.submit(chunk)] = chunk
                next_batch = now + per_batch_s
            if in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                for ref in ready:
                    chunk = in_flight.pop(ref)
                    try:
                        got = ray.get(ref)
                    except Exception as exc:  # not acknowledged: sent again, same ids (it runs once)
                        print(f"submit refused: {type(exc).__name__}", file=sys.stderr)
                        retry.append(chunk)
                        continue
                    assert got == chunk, (got, chunk)
                    for w in chunk:
                        self.acked[w] = self.deps["ab".index(w.split("-")[1])]
                    self.watcher.add({w: self.sup.result.remote(w, 600) for w in chunk})
            if now < end and now >= next_kill:
                if not order:
                    order = list(KINDS)
                    self.rng.shuffle(order)
                self.kills.append(self.kill(order.pop()))
                next_kill = time.monotonic() + self.rng.uniform(5.0, 8.0)
            time.sleep(0.05)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        wait_for(lambda: len(self.watcher.done) == len(self.acked), 300, "every result to be answered")
        self.watcher.stop = True
        refs = {w: self.sup.result.remote(w, 60) for w in self.acked}
        answers = dict(zip(refs, ray.get(list(refs.values()), timeout=120), strict=True))
        for k in self.kills:
            after = [self.watcher.done[w] - k["at"] for w in k.pop("unfinished") if self.watcher.done[w] > k["at"]]
            k["resume_s"] = round(min(after), 2) if after else None
            k["at"] = round(k["at"] - self.t0, 1)
        coordinator.stop(self.opts.namespace)
        return {**self.count(answers), "kills": self.kills}

    def count(self, answers: dict[str, Any]) -> dict[str, Any]:
        records = list(dump(self.opts.storage))
        ends = Counter(r["w"] for r in records if r.get("k") in ("completed", "failed", "compensated", "cancelled",
                                                                  "terminated"))
        completed = {r["w"] for r in records if r.get("k") == "completed"}
        outcomes = Counter((r["w"], r["step"]) for r in records if r.get("k") == "outcome")
        applied: Counter[str] = Counter()
        token_of: dict[str, str] = {}
        with open(os.path.join(self.ledger, "applied.log")) as f:
            for line in f:
                key, token = line.split()
                applied[key] += 1
                token_of[key] = token
        calls = Counter(open(os.path.join(self.ledger, "calls.log")).read().split())  # noqa: SIM115
        agree = [w for w, a in answers.items() if isinstance(a, dict) and a["module"] == f"saga_{w.split('-')[1]}"
                 and a["tokens"] == [token_of.get(f"{w}/{i}") for i in range(STEPS)]]
        lost = sorted(set(self.acked) - set(agree) | {w for w in self.acked if ends[w] != 1 or w not in completed})
        journaled_keys = {f"{w}/{s}" for w, s in outcomes}
        by_kind = Counter(k["kind"] for k in self.kills)
        resume = {kind: [k["resume_s"] for k in self.kills if k["kind"] == kind] for kind in KINDS}
        dup_ends = sum(1 for n in ends.values() if n > 1)
        dup_outcomes = sum(n - 1 for n in outcomes.values())
        applied_twice = sum(n - 1 for n in applied.values())
        return {"workflows": len(self.acked), "deployments": len(set(self.acked.values())),
                "completed": len(completed & set(self.acked)), "lost": len(lost), "lost_examples": lost[:5],
                "unanswered": len(self.acked) - len(answers),
                "duplicates": dup_ends + dup_outcomes + applied_twice, "duplicate_ends": dup_ends,
                "duplicate_outcomes": dup_outcomes, "applied_twice": applied_twice,
                "applied_without_outcome": len(set(applied) - journaled_keys),
                "missing_outcomes": sum(1 for w in self.acked for i in range(STEPS) if outcomes[(w, i)] == 0),
                "repeated_calls": sum(n - 1 for n in calls.values()),
                "kills_by_kind": dict(by_kind), "resume_s_by_kind": resume,
                "resume_max_s": {k: max([r for r in v if r is not None], default=None) for k, v in resume.items()}}


def main(root: str) -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    seed = int(os.environ.get("COORDINATOR_CHAOS_SEED", random.randrange(1 << 30)))
    window_s = max(WINDOW_S, float(os.environ.get("COORDINATOR_CHAOS_S", "0")))
    print(f"mixed chaos: seed {seed} (COORDINATOR_CHAOS_SEED={seed} replays the kills), {window_s:.0f} s of kills",
          file=sys.stderr, flush=True)
    nodes, _ = start_cluster()
    try:
        chaos = Chaos(nodes, root, seed, window_s)
        chaos.start()
        report = chaos.run()
        report.update(seed=seed, window_s=window_s)
        print(json.dumps(report), flush=True)
    finally:
        ray.shutdown()
        nodes.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
