"""Journal benchmarks: group commit against the disk's fsync limit, replication, start-up.

    python -m bench.journal [--quick]

Prints figures measured side by side in one run:
- the disk's own rate of fsynced 200-byte appends (one fsync each): the limit that
  group commit must beat; and its rate of fsynced records when each fsync covers a
  batch of 64 (the batched limit: what group commit could reach on this disk);
- journal appends/s, in process (one replica) and through LogActors with 1 and 3
  replicas (3 co-located on this one machine: each replica fsyncs its own files), on
  the append channel as the coordinator's writers send them and, beside it, as Ray calls; and
  the LogActor's rates as fractions of the batched limit, with their targets
  (`bench.report.LOGACTOR_VS_BATCHED`), MET or NOT MET;
- start-up (recovery) time with N finished and 1,000 live workflows in the history,
  from the raw log and from a snapshot (finished ones past the retention).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from typing import Any

from actors.journal import Journal, codec, open_backend
from actors.journal.files import FileBackend
from actors.records import Submitted
from actors.tuning import tune_gc
from bench import report

RECORD_BYTES = 200
FSYNC_BATCH = 64
"""Records each fsync covers in the batched limit."""


def fsync_limit(seconds: float = 2.0, batch: int = 1) -> float:
    """fsynced 200-byte records per second, one fsync for each ``batch`` of them (one write each)."""
    folder = tempfile.mkdtemp(prefix="fsync-")
    path = os.path.join(folder, "f")
    payload = b"x" * RECORD_BYTES
    n = 0
    with open(path, "ab") as f:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(batch):
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
            n += batch
        elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return n / elapsed


def record(i: int) -> Submitted:
    return Submitted(f"w{i}", "bench.sagas:Saga3", {"n": i, "pad": "x" * 100}, 0.0)


async def _in_process(n: int, writers: int, batch: int = 1) -> float:
    """Appends/s of the journal in this process: ``writers`` concurrent callers, ``batch`` records a call."""
    folder = tempfile.mkdtemp(prefix="journal-")
    j = Journal(open_backend("file://" + folder), owner="bench")
    j.open()
    calls = n // (writers * batch)

    async def writer(k: int) -> None:
        for c in range(calls):
            base = (k * calls + c) * batch
            await j.append([record(base + i) for i in range(batch)])

    start = time.perf_counter()
    await asyncio.gather(*[writer(k) for k in range(writers)])
    rate = calls * writers * batch / (time.perf_counter() - start)
    j.close()
    shutil.rmtree(folder)
    return rate


def through_actors(n: int, writers: int, batch: int, replicas: int, channel: bool = True) -> float:
    """Appends/s through LogActors: ``writers`` concurrent callers, ``batch`` records a call,
    sent as the coordinator's writers send them (one append channel for the process,
    `actors.channel`) or, ``channel=False``, each as a Ray call."""
    import uuid

    from actors.channel import Channel
    from actors.log import append_within
    from actors.options import Options
    from actors.placement import journal_replicas

    folder = tempfile.mkdtemp(prefix="journal-")
    options = Options(storage=folder, namespace=f"bench-j-{uuid.uuid4().hex[:6]}", replicas=replicas,
                      colocated_replicas=True)

    async def run() -> float:
        leader = await journal_replicas(options)
        await leader.info.remote()
        calls = n // (writers * batch)
        path = Channel(leader) if channel else None

        async def writer(k: int) -> None:
            for c in range(calls):
                base = (k * calls + c) * batch
                await append_within(leader, [record(base + i) for i in range(batch)], 60.0, path)

        start = time.perf_counter()
        await asyncio.gather(*[writer(k) for k in range(writers)])
        rate = calls * writers * batch / (time.perf_counter() - start)
        if path is not None:
            path.close()
        return rate

    try:
        return asyncio.run(run())
    finally:
        import cluster

        cluster.stop(options.namespace)
        shutil.rmtree(folder, ignore_errors=True)


def write_history(folder: str, finished: int, live: int) -> None:
    """A journal with ``finished`` completed and ``live`` unfinished 1-step workflows,
    written straight to segment files (what a long-lived coordinator leaves behind)."""
    backend = FileBackend(folder)
    os.makedirs(backend.wal, exist_ok=True)
    os.makedirs(backend.sealed, exist_ok=True)
    q, first, chunk = 0, 0, bytearray()

    def emit(r: dict[str, Any]) -> None:
        nonlocal q
        r["v"], r["q"] = codec.VERSION, q
        chunk.extend(codec.encode(r))
        q += 1

    emit({"k": "epoch", "epoch": 1, "owner": "history"})
    for i in range(finished + live):
        w = f"w{i}"
        emit({"k": "submitted", "w": w, "type": "bench.sagas:Saga3", "fields": {"n": i}, "t": 1.0})
        emit({"k": "outcome", "w": w, "step": 0, "service": "svc", "value": {"ok": i}})
        if i < finished:
            emit({"k": "completed", "w": w, "result": {"ok": i}, "t": 1.0})
        if len(chunk) > 64 << 20:
            with open(os.path.join(backend.sealed, f"{first:020d}.seg"), "wb") as f:
                f.write(chunk)
            first, chunk = q, bytearray()
    with open(os.path.join(backend.wal, f"{first:020d}.log"), "wb") as f:
        f.write(chunk)


def start_up(finished: int, live: int) -> dict[str, float]:
    folder = tempfile.mkdtemp(prefix="history-")
    try:
        write_history(folder, finished, live)
        start = time.perf_counter()
        j = Journal(open_backend("file://" + folder), owner="a", retention_s=0.0)
        j.open()
        raw = time.perf_counter() - start
        kept = j.state()["total"]
        asyncio.run(j.snapshot())
        j.close()
        start = time.perf_counter()
        j = Journal(open_backend("file://" + folder), owner="b", retention_s=0.0)
        j.open()
        snap = time.perf_counter() - start
        after = j.state()["total"]
        j.close()
        return {"raw_s": raw, "snapshot_s": snap, "kept_before": kept, "kept_after": after}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--finished", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    n = 20_000 if args.quick else 100_000
    finished = args.finished or (100_000 if args.quick else 1_000_000)
    disk = fsync_limit()
    batched = fsync_limit(batch=FSYNC_BATCH)
    print(f"disk: {disk:,.0f} fsynced {RECORD_BYTES}-byte appends/s (one fsync each); batched limit "
          f"{batched:,.0f} fsynced records/s (one fsync per {FSYNC_BATCH} records) = {batched / disk:.1f}x", flush=True)
    tune_gc()  # as the LogActor runs the journal
    local = asyncio.run(_in_process(n, 256))
    print(f"journal in process, 1 replica, 256 writers x 1 record: {local:,.0f} records/s = {local / disk:.1f}x disk",
          flush=True)
    batches = asyncio.run(_in_process(n, 32, 20))
    print(f"journal in process, 1 replica, 32 writers x 20 records a call (the LogActor rows' shape, without Ray): "
          f"{batches:,.0f} records/s = {batches / batched:.0%} of the batched limit", flush=True)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    logactor: dict[int, float] = {}
    for replicas in (1, 3):
        rate = logactor[replicas] = through_actors(n, 32, 20, replicas)
        by_ray = through_actors(n, 32, 20, replicas, channel=False)
        print(f"LogActor, {replicas} replica(s), 32 writers x 20 records a call on the append channel: "
              f"{rate:,.0f} records/s = {rate / disk:.1f}x disk = {rate / batched:.0%} of the batched limit "
              f"(each call a Ray call instead: {by_ray:,.0f} records/s = {by_ray / batched:.0%})", flush=True)
    ray.shutdown()
    print("\n".join(report.journal_targets(disk, batched, logactor)), flush=True)
    figures = start_up(finished, 1000)
    print(f"start-up with {finished:,} finished + 1,000 live workflows: {figures['raw_s']:.2f} s from the log "
          f"({figures['kept_before']:,} workflows kept), {figures['snapshot_s']:.3f} s from a snapshot "
          f"({figures['kept_after']:,} kept: the retention dropped the finished); "
          f"ratio {figures['raw_s'] / max(figures['snapshot_s'], 1e-9):.0f}x", flush=True)


if __name__ == "__main__":
    main()
