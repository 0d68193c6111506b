"""``coordinator ls``: workflow statuses a page at a time, filtered by time here.

The supervisor's ``page(state, type_part, cursor, limit)`` answers in its order (in
flight first, the newest submitted first; then finished ones, the last to end first)
however many workflows the journal keeps; the CLI reads pages until it has the rows
asked for, plus one to know whether more follow, and filters by submit time itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PAGE = 500
"""Workflows asked of the supervisor a call (its most)."""


@dataclass(frozen=True)
class Query:
    type_part: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0


def select(statuses: Iterable[Mapping[str, Any]], q: Query) -> list[Mapping[str, Any]]:
    """The statuses that match the query's type and time filters, in their order."""
    part = q.type_part.lower() if q.type_part else None
    return [s for s in statuses
            if (part is None or part in str(s.get("type", "")).lower())
            and (q.since is None or s.get("submitted_at", 0.0) >= q.since)
            and (q.until is None or s.get("submitted_at", 0.0) < q.until)]


def collect(fetch: Callable[[str | None, int], Mapping[str, Any]],
            q: Query) -> tuple[list[Mapping[str, Any]], int | None]:
    """The rows asked for, reading pages (``fetch(cursor, limit)``) until one more than
    ``offset + limit`` matched or none are left; and how many matched in all when every
    page was read (None: more follow)."""
    want = q.offset + q.limit + 1
    found: list[Mapping[str, Any]] = []
    cursor: str | None = None
    while True:
        page = fetch(cursor, PAGE)
        found += select(page["items"], q)
        cursor = page.get("next")
        if cursor is None or len(found) >= want:
            break
    return found[q.offset:q.offset + q.limit], len(found) if cursor is None else None
