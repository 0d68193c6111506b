"""Paging a journal that keeps 1,000,000 finished workflows: the time of a page.

``python -m bench.paging [--n 1000000] [--dir DIR]`` journals ``n`` finished workflows
(submitted, one outcome, completed; one in 1,000 failed) straight through the Journal
API into a ``file://`` journal (no fsync) that holds the last 10,000 in memory, like
the LogActor does, then times the requests the console makes: the first page, the
next one, a page deep in the history, a page of failed ones, a page filtered by type,
and the same after a restart (snapshot, reopen). Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.journal import Journal, open_backend
from actors.records import Completed, Failed, Record, Step, Submitted

TYPES = ("shop:BookTrip", "shop:Refund", "shop:Ship")
PAGE = 50


def _journal(uri: str) -> Journal:
    return Journal(open_backend(uri), owner="bench-paging", fsync=False, cache_size=10_000,
                   snapshot_records=10**9)


async def build(j: Journal, n: int) -> None:
    batch: list[Record] = []
    for i in range(n):
        w = f"order-{i:07d}"
        t = 1.7e9 + i * 0.001
        batch += [Submitted(w, TYPES[i % 3], {"order": i, "amount": 120}, t),
                  Step(w, 0, "payments", {"charge": f"ch-{i}"}, t=t, attempt=1),
                  Failed(w, {"type": "shop.Refused", "message": "card declined"}, t + 0.0005) if i % 1000 == 0
                  else Completed(w, {"order": i}, t + 0.0005)]
        if len(batch) >= 30_000:
            await j.append(batch)
            batch = []
    if batch:
        await j.append(batch)


def timed(what: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    began = time.perf_counter()
    page = call()
    ms = (time.perf_counter() - began) * 1000
    first = page["items"][0]["id"] if page["items"] else "-"
    print(f"  {what:<34} {ms:8.2f} ms  {len(page['items']):3d} items from {first}, {page['scanned']} ends looked at")
    return page


def pages(j: Journal) -> None:
    began = time.perf_counter()
    counts = {k: n for k, n in j.finished_counts().items() if n}
    print(f"  {'finished counts':<34} {(time.perf_counter() - began) * 1000:8.2f} ms  {counts}")
    first = timed("first page", lambda: j.page(None, None, None, PAGE))
    timed("next page", lambda: j.page(None, None, first["next"], PAGE))
    deep = j.index.finished.log.next_pos // 2
    timed("a page at the middle of history", lambda: j.page(None, None, deep, PAGE))
    failed = timed("first page of failed", lambda: j.page("failed", None, None, PAGE))
    if failed["next"] is not None:
        timed("next page of failed", lambda: j.page("failed", None, failed["next"], PAGE))
    timed("first page of type Refund", lambda: j.page(None, "refund", None, PAGE))


async def main(n: int, where: Path) -> None:
    uri = f"file://{where / 'journal'}"
    j = _journal(uri)
    j.open()
    began = time.perf_counter()
    await build(j, n)
    await j.drain()
    built = time.perf_counter() - began
    size = sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
    print(f"journaled {n:,} finished workflows in {built:.1f} s ({len(j.log.segments)} segments, "
          f"{size / 2**20:.0f} MiB on disk); {len(j.table.workflows):,} held in memory")
    pages(j)
    await j.snapshot()
    j.close()
    began = time.perf_counter()
    j = _journal(uri)
    j.open()
    print(f"reopened from the snapshot in {time.perf_counter() - began:.1f} s")
    pages(j)
    j.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MiB")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paging", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="finished workflows to journal")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the journal (default: a temp dir)")
    args = parser.parse_args()
    where = args.dir or Path(tempfile.mkdtemp(prefix="bench-paging-"))
    try:
        asyncio.run(main(args.n, where))
    finally:
        if args.dir is None:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    cli()
