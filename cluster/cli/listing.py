"""``coordinator ls``: filter, order and page workflow statuses on the client.

The supervisor's ``list(state, limit)`` answers in its table's order, filtered by
state only; the CLI asks it for every workflow in that state and does the rest here.
A server-side filter and cursor are a later step (they spare moving every status).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ALL = 2**62
"""The ``limit`` that asks the supervisor for every workflow it keeps."""


@dataclass(frozen=True)
class Query:
    type_part: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    offset: int = 0


def select(statuses: Iterable[Mapping[str, Any]], q: Query) -> tuple[list[Mapping[str, Any]], int]:
    """The page asked for, newest first, and how many matched before paging."""
    part = q.type_part.lower() if q.type_part else None
    found = [s for s in statuses
             if (part is None or part in str(s.get("type", "")).lower())
             and (q.since is None or s.get("submitted_at", 0.0) >= q.since)
             and (q.until is None or s.get("submitted_at", 0.0) < q.until)]
    found.sort(key=lambda s: (s.get("submitted_at") or 0.0, str(s.get("id"))), reverse=True)
    return found[q.offset:q.offset + q.limit], len(found)
