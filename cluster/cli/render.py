"""What the command line prints: JSON for programs, aligned tables for people.

Times are ISO 8601 in UTC with a ``Z`` in both (milliseconds in JSON, seconds in
tables); every other value is the supervisor's, unchanged, in JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

NONE = "-"
CELL_CHARS = 60


def iso(t: float | None, *, precise: bool = True) -> str | None:
    if t is None:
        return None
    stamp = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds" if precise else "seconds")
    return stamp.replace("+00:00", "Z")


def with_iso_times(value: Any) -> Any:
    """``value`` with every number under a key ending in ``_at`` as an ISO 8601 time."""
    if isinstance(value, Mapping):
        return {k: iso(v) if k.endswith("_at") and isinstance(v, (int, float)) else with_iso_times(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [with_iso_times(v) for v in value]
    return value


def as_json(value: Any) -> str:
    return json.dumps(with_iso_times(value), indent=2, default=str)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, headers in capitals; no trailing spaces."""
    cells = [[h.upper() for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def pairs(rows: Sequence[tuple[str, str]]) -> str:
    """``key  value`` lines, the values aligned."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in rows)


def cell(value: Any, chars: int = CELL_CHARS, *, keep_end: bool = False) -> str:
    """One line of at most ``chars``; ``keep_end`` keeps the distinguishing end (a type's class name)."""
    if value is None:
        return NONE
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    return "..." + text[-(chars - 3):] if keep_end else text[:chars - 3] + "..."


def when(t: float | None) -> str:
    return iso(t, precise=False) or NONE


def error_text(error: Mapping[str, Any] | None, chars: int = CELL_CHARS) -> str:
    if not error:
        return NONE
    return cell(f"{error.get('type', '?')}: {error.get('message', '')}", chars)


def status(s: Mapping[str, Any]) -> str:
    head = pairs([
        ("id", s["id"]), ("type", s["type"]), ("state", s["state"]), ("attempts", str(s["attempts"])),
        ("submitted", when(s.get("submitted_at"))), ("finished", when(s.get("finished_at"))),
        ("next retry", when(s.get("next_retry_at"))), ("last error", error_text(s.get("error"), 200)),
        ("wake at", when(s.get("wake_at"))), ("waits for", s.get("waiting_for") or NONE),
    ])
    steps = s.get("outcomes") or []
    if not steps:
        return head + "\n\nno outcomes yet"
    rows = [[str(o[0]), str(o[1]), cell(o[2])] for o in steps]
    return head + "\n\n" + table(["step", "service", "outcome"], rows)


def deployments(listed: Sequence[Mapping[str, Any]]) -> str:
    rows = [[d["id"], cell(d["runtime_env"]), cell(", ".join(d["types"]) or "-"), str(d["unfinished"]),
             str(d["actors"]), str(d["nodes"]), when(d["created_at"])] for d in listed]
    return table(["ID", "RUNTIME_ENV", "TYPES", "UNFINISHED", "ACTORS", "NODES", "CREATED"], rows)


def workflows(page: Sequence[Mapping[str, Any]], total: int | None, offset: int) -> str:
    """``total``: how many matched in all, or None when more follow the page."""
    if not page:
        return f"no workflows match ({total} before --offset)" if total else "no workflows match"
    rows = [[s["id"], cell(s["type"], 32, keep_end=True), s["state"], str(s["attempts"]), when(s.get("submitted_at")),
             when(s.get("finished_at") or s.get("next_retry_at")), error_text(s.get("error"), 48)] for s in page]
    body = table(["id", "type", "state", "att", "submitted", "finished/retry", "last error"], rows)
    end = offset + len(page)
    of = f" of {total}" if total is not None else ""
    more = f"; next page: --offset {end}" if total is None or end < total else ""
    return f"{body}\n\n{offset + 1}-{end}{of}, in flight then finished, newest first{more}"


def stats(s: Mapping[str, Any]) -> str:
    rows = []
    for k, v in s.items():
        if k == "in_flight":
            rows.append(("in flight", f"{v} of max {s.get('max_cmds', '?')}"))
        elif k not in ("counts", "max_cmds"):
            rows.append((k.replace("_", " "), _plain(v)))
    counts = s.get("counts") or {}
    return pairs(rows) + ("\n\n" + table(["state", "workflows"], [[k, str(v)] for k, v in counts.items()])
                          if counts else "")


def outcomes(found: Sequence[Mapping[str, Any]]) -> str:
    if not found:
        return "no outcomes"
    rows = [[str(o["seq"]), o["kind"], o["workflow_id"], str(o["step"]), cell(o["value"])] for o in found]
    return table(["seq", "kind", "workflow", "step", "value"], rows)


def value(v: Any) -> str:
    """A result or any other answer: a string as it is, a flat mapping as pairs, the rest as JSON."""
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping) and v and all(not isinstance(x, Mapping | list) for x in v.values()):
        return pairs([(str(k).replace("_", " "), _plain(x)) for k, x in with_iso_times(v).items()])
    return as_json(v)


def journal(report: Mapping[str, Any]) -> str:
    rows = [(k.replace("_", " "), _plain(v)) for k, v in report.items() if k not in ("snapshot", "covered_segments")]
    snap = report.get("snapshot")
    if snap:
        rows.append(("snapshot", f"{snap['name']} (seq {snap['seq']}, {snap['workflows']} workflows)"))
    for i, segment in enumerate(report.get("covered_segments", [])):
        rows.append(("covered by snapshot" if i == 0 else "", segment))
    return pairs(rows)


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return NONE if v is None else cell(v, 200)


RENDERERS: dict[str, Callable[[Any], str]] = {
    "status": status, "stats": stats, "outcomes": outcomes, "journal": journal, "value": value,
}
