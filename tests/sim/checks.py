"""Invariants checked after a run: the journal's history against what clients were told.

A *run* is a workflow id's records from its ``submitted`` record to the next one (an
id used again after its retention). The checks:

- every acknowledged submit has its ``submitted`` record, with the command as sent;
- every run ends exactly once (one terminal record);
- each step index has at most one outcome (and compensation), without gaps;
- a completed run's result is what `exec` returns given its outcomes;
- each outcome is the effect the service's ledger holds for its idempotency key;
- a failure with outcomes compensates them (or says why it could not);
- every answer a client got from `result` agrees with the run's terminal record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.sim.commands import LoudSaga, expected_result
from tests.sim.loop import EPOCH
from tests.sim.service import Services
from tests.sim.storage import TERMINAL
from tests.sim.workload import Observed
from workflows.command import type_name

LOUD = type_name(LoudSaga)


@dataclass
class Run:
    wid: str
    submitted: dict[str, Any]
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    compensations: list[dict[str, Any]] = field(default_factory=list)
    terminals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def end(self) -> dict[str, Any] | None:
        return self.terminals[0] if self.terminals else None


def runs_of(history: list[dict[str, Any]]) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {}
    for r in history:
        wid = r.get("w")
        if wid is None:
            continue
        if r["k"] == "submitted":
            runs.setdefault(wid, []).append(Run(wid, r))
            continue
        if wid not in runs:
            continue
        run = runs[wid][-1]
        if r["k"] == "outcome":
            run.outcomes.append(r)
        elif r["k"] == "compensation":
            run.compensations.append(r)
        elif r["k"] in TERMINAL:
            run.terminals.append(r)
    return runs


def _steps(run: Run, records: list[dict[str, Any]], what: str, violate: Callable[[str], None]) -> None:
    steps = [r["step"] for r in records]
    if len(set(steps)) != len(steps):
        violate(f"{run.wid}: a step index has two {what}s in the journal: {steps}")
    elif steps != list(range(len(steps))):
        violate(f"{run.wid}: {what}s are not steps 0..n-1: {steps}")


def _compensated(run: Run, violate: Callable[[str], None]) -> None:
    end = run.end
    assert end is not None
    error = end.get("error") or {}
    if end["k"] == "failed" and run.outcomes and "compensation_error" not in error:
        violate(f"{run.wid}: failed ({error.get('type')}) with {len(run.outcomes)} outcomes, never compensated")
    if end["k"] == "compensated":
        undo = [f"undo-{o['service']}" for o in reversed(run.outcomes)]
        did = [c["service"] for c in run.compensations]
        if did != undo:
            violate(f"{run.wid}: compensated with {did}, expected {undo}")


def check_run(run: Run, number: int, services: Services, violate: Callable[[str], None]) -> None:
    _steps(run, run.outcomes, "outcome", violate)
    _steps(run, run.compensations, "compensation", violate)
    if len(run.terminals) > 1:
        violate(f"{run.wid}: ended {len(run.terminals)} times: {[t['k'] for t in run.terminals]}")
    for rec, key in [(o, f"{run.wid}/{o['step']}") for o in run.outcomes] + \
                    [(c, f"{run.wid}/compensate/{c['step']}") for c in run.compensations]:
        effect = services.past.get((key, number))
        if effect is None or effect.value != rec["value"]:
            violate(f"{run.wid}: journaled {rec['k']} {rec['step']} = {rec['value']!r}, the service holds "
                    f"{None if effect is None else effect.value!r} for key {key!r}")
    end = run.end
    if end is None:
        return
    fields = run.submitted["fields"]
    if end["k"] == "completed":
        if run.submitted["type"] == LOUD:
            violate(f"{run.wid}: a command that always fails completed")
        want = expected_result(fields, [o["value"] for o in run.outcomes])
        if end.get("result") != want or len(run.outcomes) != len(fields["services"]):
            violate(f"{run.wid}: completed with {end.get('result')!r}; exec returns {want!r} given outcomes")
    else:
        _compensated(run, violate)


def check_acked(seen: Observed, runs: dict[str, list[Run]], violate: Callable[[str], None]) -> None:
    for wid, cmds in seen.acked.items():
        held = [(r.submitted["type"], r.submitted["fields"]) for r in runs.get(wid, [])]
        for cmd in cmds:
            if cmd not in held:
                violate(f"{wid[:40]}: submit acknowledged for {cmd[0]} {str(cmd[1])[:80]} but the journal "
                        f"holds {[(t, str(f)[:80]) for t, f in held] or 'nothing'}")


def check_answers(seen: Observed, runs: dict[str, list[Run]], violate: Callable[[str], None]) -> None:
    for t, wid, kind, value in seen.results:
        ends = [r.end for r in runs.get(wid, []) if r.end is not None and r.end["t"] <= t + 1e-6]
        if kind == "unknown":
            if wid in seen.acked and runs.get(wid):
                continue  # judged with retention in `check_final`
            continue
        if kind == "value" and not any(e["k"] == "completed" and e.get("result") == value for e in ends):
            violate(f"{wid}: result answered {value!r} at t={t - EPOCH:.3f}; the journal ended it "
                    f"{[(e['k'], e.get('result')) for e in ends] or 'not yet'}")
        if kind == "failed" and not any(e["k"] != "completed" and (e.get("error") or {}).get("type") == value
                                        for e in ends):
            violate(f"{wid}: result raised CommandFailed({value}) at t={t - EPOCH:.3f}; the journal ended it "
                    f"{[(e['k'], (e.get('error') or {}).get('type')) for e in ends] or 'not yet'}")


def check_finished(runs: dict[str, list[Run]], violate: Callable[[str], None]) -> None:
    open_runs = [r.wid for rs in runs.values() for r in rs if r.end is None]
    if open_runs:
        violate(f"{len(open_runs)} workflows never finished: {[w[:40] for w in open_runs[:8]]}")
