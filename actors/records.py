"""The journal's records as their writers and the journal agree on them.

Every record is a msgpack map with a format version ``v``, a sequence number ``q``
(given by the journal), a kind ``k`` and the workflow id ``w`` where it has one. The
supervisor checks a submit against `MAX_RECORD_BYTES` before it journals anything;
the journal's codec refuses to write or read a record over it.
"""

from __future__ import annotations

VERSION = 1
"""The version of the record map; the frame format is told apart by the codec."""

MAX_RECORD_BYTES = 64 << 20
"""The largest record payload the journal writes or reads back."""

KINDS = frozenset(
    {
        "epoch",  # the journal, once per recovery
        "submitted",  # the supervisor, at submit
        "started",  # a CommandActor, as an attempt begins
        "outcome",  # a CommandActor, per step of `exec`
        "delayed",  # the supervisor, for a parked attempt
        "blocked",  # the supervisor, for a parked attempt
        "completed",  # a CommandActor, as `exec` returns
        "compensating",  # a CommandActor as `exec` raises, or the supervisor as a deadline passes
        "compensation",  # a CommandActor, per step of `compensate`
        "compensated",  # a CommandActor, as compensation ends
        "failed",  # a CommandActor, or the supervisor past a deadline
        "mode",  # the supervisor, as its mode changes
        "snapshot",  # the journal, for compaction
    }
)
"""Every record kind, with who writes it."""
