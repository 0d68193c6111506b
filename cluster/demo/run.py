"""``coordinator demo``: BookTrip sagas against real HTTP services, with faults.

The demo starts the demo services (`ServiceHost`) and a coordinator, then submits
``n`` `BookTrip` sagas while faults are injected. Each reserves its flight and its
hotel together (``ctx.gather``: steps 0 and 1, whichever answers first) and backs
off between retries (its `RetryPolicy`, never exhausted):

- flights drops the first call of one key in eight (503): those commands are
  Delayed, parked and retried, and the retry's call executes once (the hotel,
  reserved alongside, is answered again from the service's idempotency record);
- hotels is out for about a second after a third of the trips are submitted: the
  gateways' circuit breakers open, commands are Blocked, the supervisor suspends
  intake and the driver sees `Suspended`, backs off and tries again until intake
  reopens;
- one trip charges more than payments accepts (422): it fails and compensates,
  cancelling its hotel and its flight;
- a few trips are held for their customer's confirmation (`HeldTrip`: reserved,
  then waiting for the signal ``confirm``): one customer confirms (``signal``), the
  others change their minds mid-run (``cancel``): those trips compensate, cancelling
  their hotel and flight, and end ``cancelled``; the check at the end looks for
  their undone reservations in the services' ledgers;
- once the first half of the trips finished, hotels loses its data (its idempotency
  ledger) and is rebuilt from the journal by `cluster.replay.replay`, the code of
  ``coordinator replay``: its ledger must equal the one before, and the second half
  then runs against it with no duplicate execution.

It then waits for every result, prints a summary and returns it as a dict.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray
import structlog

import cluster
from actors.options import Options
from cluster.demo.services import ServiceHost
from cluster.demo.trips import CONFIRM, HeldTrip, undone
from cluster.replay import replay
from workflows.errors import AtCapacity, CommandFailed, Suspended
from workflows.examples import BookTrip

log = structlog.get_logger("demo")

SERVICES = ("flights", "hotels", "payments")
REJECT_OVER = 10_000
"""payments refuses a charge above this amount; one demo trip asks for more."""
OUTAGE_S = 1.0
WIPED = "hotels"
"""The service that loses its data once the first half of the trips finished."""
CHUNK = 10
"""Trips submitted concurrently at a time (one ``submit`` call each)."""
BACKOFF_S = 0.05
"""The driver's pause after intake refused a submit (`Suspended`, `AtCapacity`)."""
HELD = {2: "cancel", 3: "confirm", 4: "cancel", 5: "cancel"}
"""Trips held for their customer (`HeldTrip`), by index, and what the customer does."""


def demo_options(storage: str, namespace: str | None = None) -> Options:
    """Settings for a demo on one machine: retries short enough to watch, quiet actors.

    ``namespace`` None picks a fresh one, so the demo never meets (nor stops) another
    coordinator on the same Ray cluster.
    """
    return Options(
        namespace=namespace or f"coordinator-demo-{uuid.uuid4().hex[:8]}",
        log_level="error",
        max_cmds=50,
        slow_retry_interval_s=0.2,
        fast_retry_interval_s=0.0,
        jitter_s=0.05,
        admission_timeout_s=5.0,
        storage=storage,
        command_actors=2,
        slots_per_actor=8,
    )


@dataclass
class Intake:
    """What the driver saw while submitting."""

    ids: list[str] = field(default_factory=list)
    suspended: int = 0
    at_capacity: int = 0
    outage_started_s: float | None = None


def run_demo(options: Options | None = None, n: int = 300, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Run the demo: ``n`` trips (n >= 2), print a summary to ``out``, return it.

    ``options`` None uses `demo_options` on a fresh temporary directory (removed at the
    end) in a namespace of its own; given options are used as they are, with
    ``services`` set to the demo's: their namespace's coordinator is stopped at the end.
    Stops the coordinator (`cluster.stop`) and the services before returning.
    """
    if n < 2:
        raise ValueError(f"the demo needs n >= 2 trips, got {n}")
    scratch = tempfile.mkdtemp(prefix="coordinator-demo-") if options is None else None
    host = ServiceHost(SERVICES).start()
    try:
        opts = (options or demo_options(str(scratch))).replace(services=host.urls(SERVICES))
        host.set_faults("flights", drop_first=1, drop_one_in=8)
        host.set_faults("payments", reject_over=REJECT_OVER)
        print(f"services at {host.base_url}; journal at {opts.storage}; namespace {opts.namespace}", file=out)
        summary = _run(opts, host, n, out)
    finally:
        host.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print_summary(summary, out)
    return summary


def _run(opts: Options, host: ServiceHost, n: int, out: TextIO) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    trips = [(f"demo-{run_id}-{i:04d}", trip(run_id, i)) for i in range(n)]
    supervisor = cluster.start(opts)
    try:
        started = time.perf_counter()
        half = n // 2
        print(f"submitting {n} trips; hotels goes out for {OUTAGE_S:.1f} s after {n // 3} and loses its data "
              f"after {half}", file=out, flush=True)
        intake = submit_all(supervisor, trips[:half], host, outage_at=n // 3, started=started)
        held = {trips[i][0]: what for i, what in HELD.items() if i < half}
        customers_act(supervisor, held, out)
        errors = collect(supervisor, intake.ids)
        rebuild = wipe_and_rebuild(supervisor, host, WIPED, out)
        later = submit_all(supervisor, trips[half:], host, outage_at=n, started=started)
        intake.ids += later.ids
        intake.suspended += later.suspended
        intake.at_capacity += later.at_capacity
        print(f"all submitted after {time.perf_counter() - started:.2f} s; waiting for results", file=out, flush=True)
        errors |= collect(supervisor, later.ids)
        wall_s = time.perf_counter() - started
        statuses = ray.get([supervisor.status.remote(wid) for wid in intake.ids])
    finally:
        cluster.stop(opts.namespace)
    cancelled = [wid for wid, what in held.items() if what == "cancel"]
    return summarize(statuses, errors, intake, services=host.stats(), wall_s=wall_s, storage=opts.storage,
                     rebuild=rebuild, cancelled={"workflows": len(cancelled),
                                                 "undone": sum(undone(host.ledger, wid) for wid in cancelled)})


def customers_act(supervisor: Any, held: dict[str, str], out: TextIO, timeout_s: float = 60.0) -> None:
    """Once each held trip waits for its customer, confirm it (the signal) or cancel it."""
    deadline = time.monotonic() + timeout_s
    waiting: set[str] = set()
    while len(waiting) < len(held) and time.monotonic() < deadline:
        waiting = {wid for wid, status in zip(held, ray.get([supervisor.status.remote(w) for w in held]),
                                              strict=True) if status["state"] == "waiting"}
        time.sleep(0.02)
    for wid, what in held.items():
        if what == "cancel":
            ray.get(supervisor.cancel.remote(wid, "the customer changed their mind"))
        else:
            ray.get(supervisor.signal.remote(wid, CONFIRM, {"by": "customer"}))
    cancels = sum(what == "cancel" for what in held.values())
    print(f"customers confirmed {len(held) - cancels} held trip(s) and cancelled {cancels} mid-run", file=out,
          flush=True)


def wipe_and_rebuild(supervisor: Any, host: ServiceHost, service: str, out: TextIO) -> dict[str, Any]:
    """Wipe ``service``'s ledger, as a service that lost its data, and rebuild it from the
    journal as ``coordinator replay`` does; whether the ledger is the one before the wipe."""
    before = host.ledger(service)
    host.set_faults(service, forget=True)
    done = replay(supervisor, service, host.url(service)).as_dict()
    rebuild = {**done, "wiped": len(before), "matches": host.ledger(service) == before}
    print(f"{service} lost its data ({rebuild['wiped']} entries); rebuilt from the journal: {done['applied']} "
          f"entries restored up to seq {done['last_seq']}, ledger "
          f"{'matches' if rebuild['matches'] else 'DIFFERS FROM'} the one before", file=out, flush=True)
    return rebuild


def trip(run_id: str, i: int) -> BookTrip:
    """Trip ``i``; trip 1 asks for more than payments accepts; the `HELD` ones wait for their customer."""
    amount = REJECT_OVER * 10 if i == 1 else 100 + (i * 37) % 900
    return (HeldTrip if i in HELD else BookTrip)(f"{run_id}-t{i}", amount)


def submit_all(
    supervisor: Any, trips: Sequence[tuple[str, BookTrip]], host: ServiceHost, outage_at: int, started: float
) -> Intake:
    """Submit every trip under its own id, ``CHUNK`` at a time, retrying refused ones.

    A submit refused by intake journals nothing, and one that raced a refusal is safe
    to repeat: the same id with the same command runs nothing twice.
    """
    intake = Intake()
    for first in range(0, len(trips), CHUNK):
        if intake.outage_started_s is None and first >= outage_at:
            host.set_faults("hotels", outage_s=OUTAGE_S)
            intake.outage_started_s = time.perf_counter() - started
            log.debug("outage_started", service="hotels", seconds=OUTAGE_S)
        pending = list(trips[first : first + CHUNK])
        while pending:
            pending = _submit_chunk(supervisor, pending, intake)
            if pending:
                time.sleep(BACKOFF_S)
    return intake


def _submit_chunk(supervisor: Any, chunk: list[tuple[str, BookTrip]], intake: Intake) -> list[tuple[str, BookTrip]]:
    """Submit ``chunk`` concurrently; return the trips intake refused."""
    refs = [supervisor.submit.remote(cmd, workflow_id=wid) for wid, cmd in chunk]
    refused: list[tuple[str, BookTrip]] = []
    for (wid, cmd), ref in zip(chunk, refs, strict=True):
        try:
            intake.ids.append(ray.get(ref))
        except Suspended:
            intake.suspended += 1
            refused.append((wid, cmd))
        except AtCapacity:
            intake.at_capacity += 1
            refused.append((wid, cmd))
    return refused


def collect(supervisor: Any, ids: Iterable[str]) -> dict[str, CommandFailed]:
    """Wait for every result; returns the failures by workflow id."""
    refs = {wid: supervisor.result.remote(wid) for wid in ids}
    errors: dict[str, CommandFailed] = {}
    for wid, ref in refs.items():
        try:
            ray.get(ref)
        except CommandFailed as exc:
            errors[wid] = exc
    return errors


def summarize(
    statuses: list[dict[str, Any]],
    errors: dict[str, CommandFailed],
    intake: Intake,
    *,
    services: dict[str, dict[str, int]],
    wall_s: float,
    storage: str,
    rebuild: dict[str, Any] | None = None,
    cancelled: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The demo's outcome as plain data; ``ok`` says whether it went as it must: one trip
    compensated, the ``cancelled`` ones cancelled and undone, every other completed."""
    n = len(statuses)
    states = dict(Counter(status["state"] for status in statuses))
    stopped = (cancelled or {}).get("workflows", 0)
    expected = {"completed": n - 1 - stopped, "compensated": 1, **({"cancelled": stopped} if stopped else {})}
    attempts = sum(int(status["attempts"]) for status in statuses)
    duplicates = sum(counters["duplicates"] for counters in services.values())
    return {
        "ok": states == expected and duplicates == 0 and (rebuild is None or bool(rebuild["matches"]))
        and (cancelled is None or cancelled["undone"] == stopped),
        "workflows": n,
        "states": states,
        "attempts": attempts,
        "retries": attempts - n,
        "refused_suspended": intake.suspended,
        "refused_at_capacity": intake.at_capacity,
        "failures": {wid: f"{exc.error_type}: {exc.message}" for wid, exc in errors.items()},
        "services": services,
        "duplicates": duplicates,
        "outage": {"service": "hotels", "seconds": OUTAGE_S, "started_s": intake.outage_started_s},
        "wall_s": wall_s,
        "workflows_per_s": n / wall_s if wall_s > 0 else 0.0,
        "storage": storage,
        "rebuild": rebuild,
        "cancelled": cancelled,
    }


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """Print the summary as small tables."""
    lines = [
        f"BookTrip demo: {summary['workflows']} workflows in {summary['wall_s']:.2f} s "
        f"({summary['workflows_per_s']:.0f} workflows/s)",
        "",
    ]
    lines += _table(("state", "workflows"), sorted(summary["states"].items()))
    lines += [""]
    lines += _table(
        ("attempts", "retries", "refused: suspended", "refused: at capacity"),
        [(summary["attempts"], summary["retries"], summary["refused_suspended"], summary["refused_at_capacity"])],
    )
    lines += [""]
    columns = ("calls", "executions", "keys", "replays", "dropped", "outage", "rejected", "duplicates", "restored")
    rows = [(name, *(counters[c] for c in columns)) for name, counters in summary["services"].items()]
    lines += _table(("service", *columns), rows)
    for wid, error in summary["failures"].items():
        lines += ["", f"failed as planned: {wid}: {error}"]
    cancelled = summary.get("cancelled")
    if cancelled:
        lines += ["", f"cancelled by their customers: {cancelled['workflows']} trips, {cancelled['undone']} with "
                  "their flight and hotel cancelled and nothing charged"]
    rebuild = summary.get("rebuild")
    if rebuild:
        lines += ["", f"rebuilt {WIPED} from the journal: {rebuild['applied']} of {rebuild['wiped']} entries restored, "
                  f"ledger {'matches' if rebuild['matches'] else 'DIFFERS'}"]
    lines += ["", "result: " + ("OK" if summary["ok"] else
                                "NOT OK: unexpected states, duplicate executions, a cancelled trip not undone "
                                "or a ledger not rebuilt")]
    print("\n" + "\n".join(lines), file=out, flush=True)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Rows under a header and a rule; the first column left-aligned, the others right."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return [line(cells[0]), "  ".join("-" * w for w in widths), *(line(row) for row in cells[1:])]
