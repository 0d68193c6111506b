"""The console's JSON API: what the pages show, built from the SupervisorActor's
public remote methods only (stats, list, page, status, history, outcomes, deployments,
suspend, resume, retry_now, and the per-workflow actions of `cluster.console.operations`).

Nothing here knows about HTTP or Ray: `Supervisor` is any object with those
methods as coroutines (`cluster.console.actor.RaySupervisor` wraps a Ray handle).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from actors.workflow_state import State
from cluster.console.operations import Operable, Operations, offered

STATES = tuple(state.value for state in State)
"""Every workflow state, as the supervisor names them."""
FINISHED = tuple(state.value for state in State if state.finished)
ACTIVE = ("running", "pending", "delayed", "blocked")

MAX_SCAN = 5000
"""The most status entries a search by a part of an id scans (`list`); pages without
one come from the supervisor's cursor (`page`) and scan nothing."""
PAGE_MAX = 200
ACTIVE_ROWS = 25
REPLAY_PAGE = 1000
REPLAY_MAX = 5000
"""The most entries of one service's `outcomes` read to find a workflow's steps."""
VALUE_CHARS = 2000


class Supervisor(Operable, Protocol):
    async def stats(self) -> dict[str, Any]: ...
    async def list(self, state: str | None, limit: int) -> builtins.list[dict[str, Any]]: ...
    async def status(self, workflow_id: str) -> dict[str, Any]: ...
    async def outcomes(self, service: str, since_seq: int, limit: int) -> builtins.list[dict[str, Any]]: ...
    async def suspend(self) -> dict[str, Any]: ...
    async def resume(self) -> dict[str, Any]: ...
    async def page(self, state: str | None, type_part: str | None, cursor: str | None,
                   limit: int) -> dict[str, Any]: ...
    async def history(self, workflow_id: str) -> builtins.list[dict[str, Any]]: ...
    async def deployments(self) -> builtins.list[dict[str, Any]]: ...
    async def retry_now(self, workflow_id: str) -> bool: ...
    async def finished_counts(self) -> dict[str, int]: ...


def iso(t: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with milliseconds, or None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def preview(value: Any) -> str:
    """A step's value as JSON text, cut at `VALUE_CHARS`."""
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS] + " …"


def summary(status: dict[str, Any], now: float) -> dict[str, Any]:
    """A list row: a status without its outcome values."""
    retry = status.get("next_retry_at")
    error = status.get("error") or {}
    return {"id": status["id"], "type": status["type"], "state": status["state"], "attempts": status["attempts"],
            "steps": len(status.get("outcomes") or []), "error_type": error.get("type"),
            "next_retry_at": iso(retry), "next_retry_in_s": None if retry is None else round(retry - now, 3),
            "submitted_at": iso(status.get("submitted_at")), "finished_at": iso(status.get("finished_at"))}


class Throughput:
    """Finished workflows per second, from samples of the stats counts.

    A count that drops (finished workflows forgotten after their retention) adds
    nothing; the rest of each rise is put in the bucket where it was seen.
    """

    def __init__(self, window_s: float = 300.0, bucket_s: float = 3.0) -> None:
        self.window_s, self.bucket_s = window_s, bucket_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, counts: dict[str, int], finished_since_start: int | None = None) -> None:
        """A sample: the supervisor's count of workflows finished since it started (the
        counts by state stop rising once its cache of finished ones is full), else the counts."""
        finished = finished_since_start if finished_since_start is not None else \
            sum(int(counts.get(s, 0)) for s in FINISHED)
        if self.samples and t <= self.samples[-1][0]:
            return
        self.samples.append((t, finished))
        while self.samples and self.samples[0][0] < t - self.window_s - self.bucket_s:
            self.samples.popleft()

    def series(self, now: float) -> dict[str, Any]:
        n = int(self.window_s / self.bucket_s)
        buckets = [0.0] * n
        start = now - n * self.bucket_s
        recent, recent_from = 0, now - 10.0
        pairs = zip(self.samples, list(self.samples)[1:], strict=False)
        for (_, f0), (t1, f1) in pairs:
            rise = max(0, f1 - f0)
            if t1 >= start:
                buckets[min(n - 1, int((t1 - start) / self.bucket_s))] += rise
            if t1 >= recent_from:
                recent += rise
        span = min(10.0, now - self.samples[0][0]) if self.samples else 0.0
        first = 0 if not self.samples else max(0, int((self.samples[0][0] - start) / self.bucket_s))
        return {"bucket_s": self.bucket_s, "window_s": self.window_s,
                "per_s": [round(b / self.bucket_s, 3) for b in buckets[first:]],
                "now_per_s": round(recent / span, 2) if span > 0 else 0.0,
                "sampled_s": round(now - self.samples[0][0], 1) if self.samples else 0.0}


class ConsoleApi:
    """The data of each page; ``read_only`` tells the page that actions will be refused."""

    def __init__(self, sup: Supervisor, *, read_only: bool, clock: Callable[[], float] = time.time) -> None:
        self.sup, self.read_only, self.clock = sup, read_only, clock
        self.throughput = Throughput()
        self.operations = Operations(sup)
        self._timelines: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()

    async def sample(self) -> dict[str, Any]:
        stats = await self.sup.stats()
        self.throughput.add(self.clock(), stats["counts"], stats.get("finished_since_start"))
        return stats

    async def overview(self) -> dict[str, Any]:
        stats = await self.sample()
        now = self.clock()
        lists = await asyncio.gather(*[self.sup.list(s, ACTIVE_ROWS) for s in ACTIVE])
        rows = {s: [summary(w, now) for w in found] for s, found in zip(ACTIVE, lists, strict=True)}
        parked = sorted(rows["delayed"] + rows["blocked"], key=lambda r: r["next_retry_at"] or "")
        return {"now": iso(now), "read_only": self.read_only, "stats": stats,
                "intake": {"open": stats["mode"] == "normal" and not stats.get("held", False),
                           "held": bool(stats.get("held", False)), "mode": stats["mode"]},
                "throughput": self.throughput.series(now),
                "in_flight": rows["running"] + rows["pending"], "parked": parked, "rows_max": ACTIVE_ROWS}

    async def workflows(self, state: str | None = None, type_: str | None = None, id_: str | None = None,
                        limit: int = 50, cursor: str | None = None, offset: int = 0) -> dict[str, Any]:
        """One page of workflows: in flight first, then finished ones, the last to end
        first, paged by the supervisor's cursor from the journal's index (a page costs its
        length, however many workflows the journal keeps). ``offset`` only numbers the
        rows. A search by id part (not a whole id) scans the newest `MAX_SCAN`."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}: one of {', '.join(STATES)}")
        limit, offset = max(1, min(limit, PAGE_MAX)), max(0, offset)
        now = self.clock()
        if id_:
            exact = await self._exact(id_, state)
            if exact is not None:
                return self._page([summary(exact, now)], 0, limit, scanned=1, truncated=False, total=1)
            return await self._search(state, type_, id_, limit, now)
        found = await self.sup.page(state, type_, cursor, limit)
        total = None
        if not type_:
            counts = (await self.sample())["counts"]
            total = counts[state] if state else sum(counts.values())
        return {"items": [summary(w, now) for w in found["items"]], "offset": offset, "limit": limit,
                "cursor": cursor, "next": found["next"], "more": found["next"] is not None, "total": total,
                "scanned": found["scanned"], "truncated": False, "scan_max": None}

    async def _search(self, state: str | None, type_: str | None, id_: str, limit: int,
                      now: float) -> dict[str, Any]:
        """Workflows whose id contains ``id_``, among the first `MAX_SCAN` the supervisor lists."""
        found = await self.sup.list(state, MAX_SCAN)
        rows = [summary(w, now) for w in found
                if (not type_ or type_.lower() in w["type"].lower()) and id_ in w["id"]]
        return self._page(rows, 0, limit, scanned=len(found), truncated=len(found) >= MAX_SCAN, total=None)

    async def _exact(self, workflow_id: str, state: str | None) -> dict[str, Any] | None:
        try:
            status = await self.sup.status(workflow_id)
        except KeyError:  # UnknownWorkflow
            return None
        return status if state is None or status["state"] == state else None

    @staticmethod
    def _page(rows: list[dict[str, Any]], offset: int, limit: int, *, scanned: int, truncated: bool,
              total: int | None) -> dict[str, Any]:
        return {"items": rows[offset:offset + limit], "offset": offset, "limit": limit, "cursor": None,
                "next": None, "more": False, "total": total, "scanned": scanned, "truncated": truncated,
                "scan_max": MAX_SCAN}

    async def deployments(self) -> dict[str, Any]:
        """The deployments as ``coordinator deployments`` lists them, newest first."""
        found = await self.sup.deployments()
        return {"now": iso(self.clock()), "read_only": self.read_only,
                "deployments": [{**d, "created_at": iso(d.get("created_at"))} for d in found]}

    async def retry_now(self, workflow_id: str) -> dict[str, Any]:
        """Retry a delayed or blocked workflow at once; ``retried`` False if it was not parked."""
        if not workflow_id:
            raise ValueError("id is required")
        return {"id": workflow_id, "retried": await self.sup.retry_now(workflow_id)}

    async def workflow(self, workflow_id: str) -> dict[str, Any]:
        """A workflow's status with ISO times and its steps as a timeline, each step with
        the time and attempt its record carries (None in records journaled before they were)."""
        status = await self.sup.status(workflow_id)
        timeline, complete = await self._from_history(status)
        if timeline is None:
            timeline, complete = await self._timeline(status)
        now = self.clock()
        out = {k: v for k, v in status.items() if k != "outcomes"}
        out.update({"submitted_at": iso(status.get("submitted_at")), "finished_at": iso(status.get("finished_at")),
                    "next_retry_at": iso(status.get("next_retry_at")), "now": iso(now),
                    "next_retry_in_s": summary(status, now)["next_retry_in_s"],
                    "duration_s": _duration(status, now), "timeline": timeline, "timeline_complete": complete,
                    "read_only": self.read_only,
                    "retry_offered": not self.read_only and status["state"] in ("delayed", "blocked")})
        offer = offered(status, compensated=any(t["kind"] == "compensation" for t in timeline))
        out.update({**offer, "actions": [] if self.read_only else offer["actions"]})
        return out

    async def _from_history(self, status: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, bool]:
        """The timeline from the workflow's journaled records: its outcomes in step order,
        then its compensations in journal order. None when the journal no longer holds
        every outcome record (segments compacted away): the caller falls back to `_timeline`."""
        try:
            records = await self.sup.history(status["id"])
        except KeyError:  # forgotten meanwhile
            return None, False
        steps = {r["step"]: r for r in records if r["k"] == "outcome"}
        if len(steps) != len(status.get("outcomes") or []):
            return None, False
        comps = [r for r in records if r["k"] == "compensation"]
        entries = [_entry("outcome", steps[s]) for s in sorted(steps)] + [_entry("compensation", r) for r in comps]
        return entries, True

    async def _timeline(self, status: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The steps of `exec` (from `status`) and, once the workflow is compensating,
        its compensations found in `outcomes` of the services it used and their
        ``undo-<service>`` names; cached once the workflow has finished."""
        wid = status["id"]
        if wid in self._timelines:
            self._timelines.move_to_end(wid)
            return self._timelines[wid], True
        steps = [{"kind": "outcome", "step": s, "service": svc, "value": preview(v), "seq": None, "at": None,
                  "attempt": None} for s, svc, v in status.get("outcomes") or []]
        if status.get("error") is None:
            return steps, True
        services = list(dict.fromkeys(s["service"] for s in steps))
        services += [f"undo-{s}" for s in services]
        found = await asyncio.gather(*[self._replay(svc, wid) for svc in services])
        seqs = {(e["kind"], e["step"], e["service"]): e["seq"] for entries, _ in found for e in entries}
        for s in steps:
            s["seq"] = seqs.get(("outcome", s["step"], s["service"]))
        comps = sorted((e for entries, _ in found for e in entries if e["kind"] == "compensation"),
                       key=lambda e: (e["seq"], e["step"]))
        steps += [{"kind": "compensation", "step": e["step"], "service": e["service"], "value": preview(e["value"]),
                   "seq": e["seq"], "at": None, "attempt": None} for e in comps]
        complete = all(done for _, done in found)
        if status["state"] in FINISHED and complete:
            self._timelines[wid] = steps
            while len(self._timelines) > 256:
                self._timelines.popitem(last=False)
        return steps, complete

    async def _replay(self, service: str, workflow_id: str) -> tuple[list[dict[str, Any]], bool]:
        """The entries of ``workflow_id`` in ``service``'s outcomes, reading at most
        `REPLAY_MAX` of them; and whether the read reached the end."""
        mine: list[dict[str, Any]] = []
        since, read = 0, 0
        while read < REPLAY_MAX:
            page = await self.sup.outcomes(service, since, REPLAY_PAGE)
            mine += [e for e in page if e["workflow_id"] == workflow_id]
            read += len(page)
            if len(page) < REPLAY_PAGE:
                return mine, True
            since = page[-1]["seq"] + 1
        return mine, False

    async def act(self, action: str) -> dict[str, Any]:
        if action == "suspend":
            return await self.sup.suspend()
        if action == "resume":
            return await self.sup.resume()
        raise ValueError(f"unknown action {action!r}")


def _entry(kind: str, r: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "step": r["step"], "service": r["service"], "value": preview(r["value"]), "seq": r["q"],
            "at": iso(r.get("t")), "attempt": r.get("attempt")}


def _duration(status: dict[str, Any], now: float) -> float | None:
    start = status.get("submitted_at")
    if start is None:
        return None
    end: float = status.get("finished_at") or now
    return round(end - float(start), 3)
