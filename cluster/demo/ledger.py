"""The demo services' state and the rules of a call: plain code, no I/O.

Each service keeps its answers by idempotency key (its ledger: a reservation, a
charge, a cancel, a refund) and counters. A service that lost its data is rebuilt
by `ServiceState.restore` from journaled outcomes and compensations (``coordinator
replay``): a restored entry is stored as the answer to its key, counted as
``restored``, never as an execution.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("services")

DEFAULT_SERVICES = ("flights", "hotels", "payments")
FAULT_KEYS = frozenset({"outage", "outage_s", "delay_ms", "drop_first", "drop_one_in", "reject_over", "forget"})

Answer = tuple[int, dict[str, Any]]


@dataclass
class Faults:
    """The faults injected into one service."""

    outage_until: float = 0.0
    """Clock time until which every call gets 503 (``inf``: until switched off)."""
    delay_ms: int = 0
    drop_first: int = 0
    drop_one_in: int = 1
    reject_over: float | None = None


@dataclass
class Service:
    """One service's state: faults, counters, stored answers by idempotency key."""

    name: str
    faults: Faults = field(default_factory=Faults)
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("calls", "executions", "keys", "replays", "dropped", "outage", "rejected", "duplicates",
             "restored"), 0
        )
    )
    answers: dict[str, Answer] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)


class ServiceState:
    """Every service's state and the rules of a call; plain code, no I/O.

    A call is decided in one synchronous step (`answer`), so two concurrent calls with
    one key can never both execute.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_SERVICES, clock: Callable[[], float] = time.monotonic) -> None:
        self._names = tuple(names)
        self._clock = clock
        self.services: dict[str, Service] = {}
        self.reset()

    def reset(self) -> None:
        self.services = {name: Service(name) for name in self._names}

    def service(self, name: str) -> Service:
        found = self.services.get(name)
        if found is None:
            found = self.services[name] = Service(name)
        return found

    def answer(self, name: str, op: str, args: list[Any], key: str) -> Answer:
        """Decide one call: a fault's 503, the stored answer, or execute and store."""
        svc = self.service(name)
        svc.counters["calls"] += 1
        refusal = self._fault(svc, key)
        if refusal is not None:
            return refusal
        stored = svc.answers.get(key)
        if stored is not None:
            svc.counters["replays"] += 1
            return stored
        svc.counters["duplicates" if key in svc.executed else "keys"] += 1
        svc.executed.add(key)
        svc.counters["executions"] += 1
        answer = self._execute(svc, op, args)
        svc.answers[key] = answer
        return answer

    def _fault(self, svc: Service, key: str) -> Answer | None:
        faults = svc.faults
        if self._clock() < faults.outage_until:
            svc.counters["outage"] += 1
            return 503, {"error": f"{svc.name} is out"}
        if faults.drop_first and zlib.crc32(key.encode()) % faults.drop_one_in == 0:
            seen = svc.attempts[key] = svc.attempts.get(key, 0) + 1
            if seen <= faults.drop_first:
                svc.counters["dropped"] += 1
                return 503, {"error": f"{svc.name} dropped call {seen} of {key}"}
        return None

    def _execute(self, svc: Service, op: str, args: list[Any]) -> Answer:
        limit = svc.faults.reject_over
        amount = _amount(args)
        if op == "charge" and limit is not None and amount is not None and amount > limit:
            svc.counters["rejected"] += 1
            return 422, {"error": f"amount {amount:g} is over the limit {limit:g}"}
        ref = f"{svc.name}-{svc.counters['executions']}"
        return 200, {"result": {"service": svc.name, "op": op, "ref": ref, "args": args}}

    def restore(self, name: str, entries: list[dict[str, Any]]) -> Answer:
        """Apply replayed journal entries (``key``, ``value``) to ``name``'s ledger.

        An entry whose key has an answer already is left alone; any other is stored as
        the answer ``{"result": value}``, as its first call answered. Nothing executes.
        """
        svc = self.service(name)
        if self._clock() < svc.faults.outage_until:
            svc.counters["outage"] += 1
            return 503, {"error": f"{svc.name} is out"}
        if any(not (isinstance(e, dict) and isinstance(e.get("key"), str) and e["key"] and "value" in e)
               for e in entries):
            return 400, {"error": 'each entry needs a "key" (string) and a "value"'}
        applied = 0
        for entry in entries:
            if entry["key"] not in svc.answers:
                svc.answers[entry["key"]] = (200, {"result": entry["value"]})
                svc.executed.add(entry["key"])
                applied += 1
        svc.counters["restored"] += applied
        return 200, {"applied": applied, "present": len(entries) - applied}

    def ledger(self, name: str) -> dict[str, Any]:
        """The results ``name`` answered with (2xx), by idempotency key."""
        return {key: body["result"] for key, (status, body) in self.service(name).answers.items() if status < 300}

    def set_faults(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change some faults of a service (keys as in the module doc); returns them all."""
        unknown = set(changes) - FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {sorted(FAULT_KEYS)}")
        if int(changes.get("drop_one_in") or 1) < 1:
            raise ValueError("drop_one_in must be >= 1")
        svc = self.service(name)
        faults = svc.faults
        if "outage" in changes:
            faults.outage_until = math.inf if changes["outage"] else 0.0
        if changes.get("outage_s") is not None:
            faults.outage_until = self._clock() + float(changes["outage_s"])
        for knob in ("delay_ms", "drop_first", "drop_one_in"):
            if changes.get(knob) is not None:
                setattr(faults, knob, int(changes[knob]))
        if "reject_over" in changes:
            faults.reject_over = None if changes["reject_over"] is None else float(changes["reject_over"])
        if changes.get("forget"):
            svc.answers.clear()
        log.debug("faults_set", service=svc.name, **changes)
        return self.faults_of(svc)

    def faults_of(self, svc: Service) -> dict[str, Any]:
        faults = dataclasses.asdict(svc.faults)
        faults["outage"] = self._clock() < faults.pop("outage_until")
        return faults

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: dict(svc.counters) for name, svc in sorted(self.services.items())}


def _amount(args: list[Any]) -> float | None:
    """The amount of a charge: its first numeric argument."""
    for arg in args:
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return float(arg)
    return None
