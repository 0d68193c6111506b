"""The order in which workflows ended, kept by the journal's `Index` to page its
finished workflows newest first by cursor, whatever their number.

Per end: the workflow id, its end time, the terminal kind and the command type (both
as small codes) and a position that only grows. A page starts below a position (the
cursor) and walks down; with a state it walks that kind's entries only, so a page
costs its length plus what a type filter skips, never the whole history. Nothing
here reads storage: the caller folds the page's workflows.

An entry is current while `Index.finished` holds the same end time for its id; one
forgotten by retention, or ended again after its id was freed, stays as a stale
entry until enough are stale that `compact` drops them (amortised O(1) per end).
About 35 bytes an end, beside the ~180 of the id's reservation.

Positions are given anew when the journal opens (in the order of the ends it keeps),
so a cursor taken before a restart goes on from about the same place, not exactly.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

KINDS = ("", "completed", "failed", "compensated", "cancelled", "terminated")
"""Terminal kinds by code; 0: unknown (an end restored from a snapshot that did not keep it)."""
_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
COMPACT_MIN = 1024


@dataclass
class Page:
    ids: list[str]
    next: int | None
    """The cursor of the next page (a position: the next page lists ends below it), or None at the end."""
    scanned: int
    """Entries looked at (the cost of the page)."""
    unsure: dict[str, int]
    """Ids among ``ids`` whose kind or type is unknown (restored from an older snapshot),
    by entry: the caller checks them against their fold, and may `learn` them."""


class EndLog:
    """Ends in the order they were journaled; see the module docstring."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.times = array("d")
        self.kinds = bytearray()
        self.types = array("H")
        self.pos = array("q")
        self.by_kind: dict[int, array[int]] = {}  # per kind code, the indexes of its entries
        self.type_names: list[str] = [""]
        self._type_codes: dict[str, int] = {"": 0}
        self.next_pos = 0
        self.stale = 0
        self._counts: list[int] | None = [0] * len(KINDS)  # current ends by kind; None: count again

    def __len__(self) -> int:
        return len(self.ids)

    def _type_code(self, type_: str) -> int:
        code = self._type_codes.get(type_)
        if code is None:
            if len(self.type_names) >= 0xFFFF:  # more types than codes: the rest count as unknown
                return 0
            code = self._type_codes[type_] = len(self.type_names)
            self.type_names.append(type_)
        return code

    def add(self, workflow_id: str, t: float, kind: str, type_: str) -> None:
        code = self._type_code(type_)
        k = _KIND_CODE.get(kind, 0)
        if self._counts is not None:
            self._counts[k] += 1
        self.by_kind.setdefault(k, array("q")).append(len(self.ids))
        self.ids.append(workflow_id)
        self.times.append(t)
        self.kinds.append(k)
        self.types.append(code)
        self.pos.append(self.next_pos)
        self.next_pos += 1

    def entries(self, current: Callable[[str, float], bool]) -> Iterator[tuple[str, float, str, str]]:
        """The current ends, oldest first, as (id, end time, kind, type). Safe to run in
        another thread while ends are added: it reads the entries there were when it began."""
        ids, times, kinds, types, names = self.ids, self.times, self.kinds, self.types, self.type_names
        for i in range(len(ids)):
            if current(ids[i], times[i]):
                yield ids[i], times[i], KINDS[kinds[i]], names[types[i]]

    def page(self, current: Callable[[str, float], bool], limit: int, before: int | None = None,
             kind: str | None = None, type_part: str | None = None, budget: int = 100_000) -> Page:
        """Up to ``limit`` current ends below position ``before`` (None: from the newest),
        newest first, of ``kind`` and of a type containing ``type_part`` (case-folded);
        looking at no more than ``budget`` entries. Ends of unknown kind or type may
        match: they are in ``unsure``."""
        end = len(self.ids) if before is None else bisect_left(self.pos, before)
        code = None
        if kind is not None:
            code = _KIND_CODE.get(kind)
            if not code:
                raise ValueError(f"{kind!r} is not a finished state")
        types = None
        if type_part:
            part = type_part.lower()
            types = {c for c, name in enumerate(self.type_names) if c and part in name.lower()}
        found: list[str] = []
        unsure: dict[str, int] = {}
        scanned = 0
        for i in self._descending(end, code):
            if len(found) >= limit or scanned >= budget:
                return Page(found, self.pos[i] + 1, scanned, unsure)  # this one on, on the next page
            scanned += 1
            k, ty = self.kinds[i], self.types[i]
            if (code is not None and k not in (code, 0)) or (types is not None and ty and ty not in types):
                continue
            if current(self.ids[i], self.times[i]):
                found.append(self.ids[i])
                if (code is not None and not k) or (types is not None and not ty):
                    unsure[self.ids[i]] = i
        return Page(found, None, scanned, unsure)

    def _descending(self, end: int, code: int | None) -> Iterator[int]:
        """Entries below ``end``, newest first: all, or those of kind ``code`` and of unknown kind."""
        if code is None:
            yield from range(end - 1, -1, -1)
            return
        empty = array("q")
        a, b = self.by_kind.get(code, empty), self.by_kind.get(0, empty)
        i, k = bisect_left(a, end) - 1, bisect_left(b, end) - 1
        while i >= 0 or k >= 0:
            if k < 0 or (i >= 0 and a[i] > b[k]):
                yield a[i]
                i -= 1
            else:
                yield b[k]
                k -= 1

    def learn(self, entry: int, kind: str, type_: str) -> None:
        """The kind and type of an entry that had none, read from its fold."""
        if entry < len(self.ids):
            k = _KIND_CODE.get(kind, 0)
            if self._counts is not None:
                self._counts[self.kinds[entry]] -= 1
                self._counts[k] += 1
            self.kinds[entry] = k
            self.types[entry] = self._type_code(type_)

    def forgotten(self, n: int = 1, kind: str | None = None) -> None:
        """``n`` entries went stale: of ``kind``, or of a kind not known here (then the
        counts are counted again when next asked for)."""
        self.stale += n
        if kind is None or self._counts is None:
            self._counts = None
        else:
            self._counts[_KIND_CODE.get(kind, 0)] -= n

    def counts(self, current: Callable[[str, float], bool]) -> dict[str, int]:
        """Current ends by kind (``""``: unknown); kept up to date as ends are added, and
        counted again (once, O(ends)) after retention forgot some."""
        if self._counts is None:
            counted = [0] * len(KINDS)
            for i in range(len(self.ids)):
                if current(self.ids[i], self.times[i]):
                    counted[self.kinds[i]] += 1
            self._counts = counted
        return {KINDS[k]: n for k, n in enumerate(self._counts) if k or n}

    def compact(self, current: Callable[[str, float], bool]) -> bool:
        """Drop stale entries once they are at least half of them; whether it did."""
        if self.stale < COMPACT_MIN or self.stale * 2 < len(self.ids):
            return False
        keep = [i for i in range(len(self.ids)) if current(self.ids[i], self.times[i])]
        ids, times, kinds, types, pos = self.ids, self.times, self.kinds, self.types, self.pos
        self.ids = [ids[i] for i in keep]
        self.times = array("d", (times[i] for i in keep))
        self.kinds = bytearray(kinds[i] for i in keep)
        self.types = array("H", (types[i] for i in keep))
        self.pos = array("q", (pos[i] for i in keep))
        self.by_kind = {}
        for n, k in enumerate(self.kinds):
            self.by_kind.setdefault(k, array("q")).append(n)
        self.stale = 0
        return True
