"""`bench.report`'s target lines: synthetic rows, each verdict both ways, and missing rows."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report


def row(system: str, workload: str, wf_per_s: float, *, n: int = 2000, in_flight: int = 50, driver: str | None = None,
        p50_ms: float = 1.0, p99_ms: float = 10.0, cpu_s_per_wf: float = 0.0001, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"system": system, "workload": workload, "n": n, "in_flight": in_flight,
                         "wf_per_s": wf_per_s, "p50_ms": p50_ms, "p99_ms": p99_ms, "mean_ms": p50_ms,
                         "cpu_s_per_wf": cpu_s_per_wf, "ok": True, **extra}
    if driver is not None:
        r["driver"] = driver
        if system == "coordinator":
            r.update(config=f"a=1 s=64 driver={driver}", command_actors=1, slots_per_actor=64, fsync=True)
    return r


def lines(rows: list[dict[str, Any]]) -> list[str]:
    report.derive(rows)
    report.table(rows)  # renders without error too
    return report.ratios(rows)


def only(out: list[str], *needles: str) -> str:
    found = [line for line in out if all(n in line for n in needles)]
    assert len(found) == 1, (needles, out)
    return found[0]


def verdict(line: str) -> str:
    return line.rsplit("-> ", 1)[1]


@pytest.mark.parametrize(("coord", "expected"), [(600.0, "MET"), (400.0, "NOT MET")])
def test_client_against_its_floor(coord: float, expected: str) -> None:
    out = lines([row("ray-floor", "saga3", 1000.0, driver="client"),
                 row("coordinator", "saga3", coord, driver="client")])
    line = only(out, "driver=client", f">= {report.CLIENT_VS_FLOOR:.0%} of ray-floor(driver=client)")
    assert f"{coord:,.1f} vs 1,000.0 wf/s" in line
    assert verdict(line) == expected


def test_floor_of_another_n_is_not_compared() -> None:
    out = lines([row("ray-floor", "saga3", 1000.0, n=500, driver="client"),
                 row("coordinator", "saga3", 900.0, driver="client")])
    line = only(out, "driver=client", "ray-floor(driver=client)")
    assert "not measured" in line and "MET" not in line


@pytest.mark.parametrize(("p99", "expected"), [(report.CLIENT_P99_MS - 1, "MET"), (report.CLIENT_P99_MS, "NOT MET")])
def test_client_p99(p99: float, expected: str) -> None:
    out = lines([row("coordinator", "saga3", 500.0, driver="client", p99_ms=p99)])
    assert verdict(only(out, "driver=client p99 <")) == expected


@pytest.mark.parametrize(("coord", "expected"), [(800.0, "MET"), (799.0, "NOT MET")])
def test_calls_against_its_floor(coord: float, expected: str) -> None:
    out = lines([row("ray-floor", "saga3", 1000.0, driver="calls"), row("ray-floor", "saga3", 5000.0, driver="client"),
                 row("coordinator", "saga3", coord, driver="calls"),
                 row("coordinator", "saga3", 3000.0, driver="client")])
    line = only(out, "driver=calls", "ray-floor(driver=calls)")
    assert f"{coord:,.1f} vs 1,000.0 wf/s" in line
    assert verdict(line) == expected
    # the client target takes the client rows only: 3,000 / 5,000 = 60%
    assert verdict(only(out, "driver=client", "ray-floor(driver=client)")) == "MET"


@pytest.mark.parametrize(("cpu_s", "expected"), [(0.0001, "MET"), (0.0002, "NOT MET")])
def test_cpu_per_workflow(cpu_s: float, expected: str) -> None:
    out = lines([row("coordinator", "saga3", 500.0, driver="client", cpu_s_per_wf=cpu_s),
                 row("coordinator", "saga3", 100.0, driver="calls", cpu_s_per_wf=0.0001 if cpu_s > 0.00015 else 1.0)])
    line = only(out, "CPU per workflow")
    assert "driver=client" in line  # the best configuration's
    assert verdict(line) == expected


@pytest.mark.parametrize(("calls_p50", "client_p50", "expected"), [
    (4.0, 9.0, "MET"), (9.0, 4.9, "MET"), (6.0, 5.0, "NOT MET"),
])
def test_single_in_flight_p50(calls_p50: float, client_p50: float, expected: str) -> None:
    out = lines([row("bare", "saga3-single", 3000.0, n=300, in_flight=1, p50_ms=0.3),
                 row("coordinator", "saga3-single", 100.0, n=300, in_flight=1, driver="calls", p50_ms=calls_p50),
                 row("coordinator", "saga3-single", 100.0, n=300, in_flight=1, driver="client", p50_ms=client_p50)])
    line = only(out, "saga3-single p50")
    assert f"driver=calls {calls_p50:.2f} ms" in line and f"driver=client {client_p50:.2f} ms" in line
    assert "bare asyncio 0.30 ms" in line
    best = min(calls_p50, client_p50)
    assert f"best driver={'calls' if calls_p50 <= client_p50 else 'client'} {best:.2f} ms" in line
    assert verdict(line) == expected


def test_single_in_flight_one_driver_no_bare() -> None:
    out = lines([row("coordinator", "saga3-single", 100.0, n=100, in_flight=1, driver="client", p50_ms=7.0)])
    line = only(out, "saga3-single p50")
    assert "bare" not in line and verdict(line) == "NOT MET"


@pytest.mark.parametrize(("coord", "low", "goal"), [(900.0, "MET", "MET"), (500.0, "MET", "NOT MET"),
                                                    (300.0, "NOT MET", "NOT MET")])
def test_io_against_bare(coord: float, low: str, goal: str) -> None:
    out = lines([row("bare", "saga3-io", 1000.0, n=1000, in_flight=100),
                 row("coordinator", "saga3-io", coord, n=1000, in_flight=100, driver="client")])
    line = only(out, "saga3-io vs bare")
    assert f">= 1/3 -> {low};" in line
    assert line.endswith(f">= {report.IO_VS_BARE_GOAL:g} -> {goal}")


@pytest.mark.parametrize(("coord", "expected"), [(600.0, "MET"), (500.0, "NOT MET")])
def test_existing_dbos_target_kept(coord: float, expected: str) -> None:
    out = lines([row("dbos-sqlite", "saga3", 90.0), row("coordinator", "saga3", coord, driver="client")])
    assert verdict(only(out, f"saga3 >= {report.SAGA3_VS_DBOS:g}x DBOS(SQLite)")) == expected
    assert verdict(only(out, "saga3 p99 <")) == "MET"


@pytest.mark.parametrize("rows", [
    [],
    [row("bare", "saga3", 100.0)],
    [row("ray-floor", "saga3", 100.0, driver="client")],
    [row("coordinator", "saga3-single", 0.0, n=100, in_flight=1, driver="calls", error="RuntimeError: boom")],
    [row("coordinator", "scale", 10.0, n=1000, driver="client"),
     row("coordinator", "scale", 0.0, n=10_000, driver="client", error="RuntimeError: boom")],
    [row("coordinator", "saga3-io", 10.0, n=1000, driver="client")],
])
def test_missing_rows_give_no_verdict(rows: list[dict[str, Any]]) -> None:
    out = lines(rows)
    verdicts = [line for line in out if line.endswith("MET")]
    assert verdicts == []
    assert any("not measured" in line for line in out)


def test_full_run_every_target_line() -> None:
    rows = [row("bare", "saga3", 5000.0), row("dbos-sqlite", "saga3", 50.0),
            row("ray-floor", "saga3", 1500.0, driver="calls"), row("ray-floor", "saga3", 4000.0, driver="client"),
            row("coordinator", "saga3", 1300.0, driver="calls"), row("coordinator", "saga3", 2500.0, driver="client"),
            row("bare", "saga3-single", 3000.0, n=300, in_flight=1, p50_ms=0.3),
            row("coordinator", "saga3-single", 200.0, n=300, in_flight=1, driver="calls", p50_ms=4.0),
            row("coordinator", "saga3-single", 150.0, n=300, in_flight=1, driver="client", p50_ms=6.0),
            row("bare", "saga3-io", 1000.0, n=1000, in_flight=100),
            row("coordinator", "saga3-io", 850.0, n=1000, in_flight=100, driver="client"),
            row("coordinator", "scale", 1000.0, n=1000, driver="client"),
            row("coordinator", "scale", 950.0, n=100_000, driver="client")]
    out = lines(rows)
    targets = out[out.index("targets (fsync on; each figure against rows of this run):") + 1:]
    assert targets.pop(-2).startswith("  scale, cost per workflow")
    assert len(targets) == 9, targets
    assert all(line.endswith("MET") for line in targets), targets
    assert not any("not measured" in line for line in targets)


@pytest.mark.parametrize(("one", "three", "expected"), [
    (3000.0, 2000.0, ("MET", "MET")), (2999.0, 1999.0, ("NOT MET", "NOT MET")), (5000.0, 100.0, ("MET", "NOT MET")),
])
def test_journal_targets(one: float, three: float, expected: tuple[str, str]) -> None:
    out = report.journal_targets(500.0, 10_000.0, {1: one, 3: three})
    assert verdict(only(out, "1 replica(s) >= 30%")) == expected[0]
    assert verdict(only(out, "3 replica(s) >= 20%")) == expected[1]
    assert f"{one:,.0f} vs 10,000 records/s" in only(out, "1 replica(s)")


def test_journal_targets_missing() -> None:
    out = report.journal_targets(500.0, 0.0, {1: 100.0})
    assert not any(line.endswith("MET") for line in out)
    assert len([line for line in out if "not measured" in line]) == 2


def test_the_table_prints_a_million_whole() -> None:
    from bench.report import table

    row = {"system": "coordinator", "workload": "soak", "n": 1_000_000, "in_flight": 100, "config": "a=1 s=64",
           "wf_per_s": 1017.7, "p50_ms": 1.8, "p99_ms": 2.8, "cpu_s_per_wf": 0.0, "ok": True}
    assert " 1,000,000 " in table([row]).splitlines()[1]
