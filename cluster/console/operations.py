"""The operator's per-workflow actions, from the JSON bodies the console's POSTs carry:
cancel, terminate, resume a paused one, fork, signal; and which of them apply to a
workflow in a given state (what its page offers).

Each checks its input first and raises `ValueError` naming what is wrong (the server
answers 400); the supervisor's `UnknownWorkflow` (a `KeyError`, 404) and
`InvalidCommand` (a `ValueError`, 400) pass through. Every action is idempotent as
the supervisor's method under it is: a repeat answers False (or the same fork id).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from actors.workflow_state import State

FINISHED = frozenset(state.value for state in State if state.finished)
REASON_CHARS = 1000


class Operable(Protocol):
    async def status(self, workflow_id: str) -> dict[str, Any]: ...
    async def cancel(self, workflow_id: str, reason: str) -> bool: ...
    async def terminate(self, workflow_id: str, reason: str) -> bool: ...
    async def resume_workflow(self, workflow_id: str) -> bool: ...
    async def fork(self, workflow_id: str, from_step: int, new_workflow_id: str) -> str: ...
    async def signal(self, workflow_id: str, name: str, payload: Any) -> bool: ...


def offered(status: dict[str, Any], *, compensated: bool) -> dict[str, Any]:
    """The actions that apply to a workflow in ``status``'s state, for its page:
    ``actions`` by name, ``fork_max_step`` (the furthest step a fork may start from:
    0 once it compensated, since a copied step may have been undone) and
    ``signal_name`` (what a waiting workflow waits for)."""
    state, steps = status["state"], len(status.get("outcomes") or [])
    actions = []
    if state in ("delayed", "blocked"):
        actions.append("retry-now")
    if state not in FINISHED:
        actions += ["cancel", "terminate"]
    if state == "paused":
        actions.append("resume-workflow")
    if steps:
        actions.append("fork")
    if state == "waiting":
        actions.append("signal")
    return {"actions": actions, "fork_max_step": 0 if compensated else steps,
            "signal_name": status.get("waiting_for") if state == "waiting" else None}


def _text(body: dict[str, Any], name: str, *, required: bool, limit: int | None = None) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if limit is not None and len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    return value


def _step(body: dict[str, Any]) -> int:
    raw = body.get("from_step")
    if raw is None or raw == "":
        raise ValueError("from_step is required")
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError(f"from_step must be a step index (an integer >= 0), got {json.dumps(raw)}")
    return raw


def _payload(body: dict[str, Any]) -> Any:
    """``payload`` as a JSON value, or ``payload_json`` as JSON text (what the page's field holds)."""
    if "payload_json" not in body:
        return body.get("payload")
    text = body["payload_json"]
    if not isinstance(text, str):
        raise ValueError("payload_json must be a string of JSON text")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


class Operations:
    """The actions over a supervisor; each takes the request's JSON object and answers one."""

    def __init__(self, sup: Operable) -> None:
        self.sup = sup

    async def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stop and compensate; ``cancelled`` False if it had finished (or was stopping already)."""
        wid = _text(body, "id", required=True)
        reason = _text(body, "reason", required=False, limit=REASON_CHARS)
        return {"id": wid, "cancelled": await self.sup.cancel(wid, reason)}

    async def terminate(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stop without compensating; ``terminated`` False if it had finished."""
        wid = _text(body, "id", required=True)
        reason = _text(body, "reason", required=False, limit=REASON_CHARS)
        return {"id": wid, "terminated": await self.sup.terminate(wid, reason)}

    async def resume_workflow(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a paused workflow again; ``resumed`` False if it was not paused."""
        wid = _text(body, "id", required=True)
        try:
            resumed = await self.sup.resume_workflow(wid)
        except KeyError:  # not in the supervisor's memory: unknown (404), or finished long ago
            await self.sup.status(wid)
            resumed = False
        return {"id": wid, "resumed": resumed}

    async def fork(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new workflow with the outcomes before ``from_step`` copied; ``new_id``
        defaults to ``<id>-fork-<from_step>`` (a repeat answers the same fork)."""
        wid = _text(body, "id", required=True)
        step = _step(body)
        new_id = _text(body, "new_id", required=False) or f"{wid}-fork-{step}"
        return {"id": wid, "from_step": step, "new_id": await self.sup.fork(wid, step, new_id)}

    async def signal(self, body: dict[str, Any]) -> dict[str, Any]:
        """Deliver signal ``name``; ``delivered`` False for a repeat of the name or a finished workflow."""
        wid = _text(body, "id", required=True)
        name = _text(body, "name", required=True)
        payload = _payload(body)
        return {"id": wid, "name": name, "delivered": await self.sup.signal(wid, name, payload)}
