"""The soak's report: the RSS target is over all coordinator processes together, each one's growth beside it."""

from __future__ import annotations

from typing import Any

from bench.soak import table


def _row(first: dict[str, float], last: dict[str, float], rates: tuple[float, float], p99: float) -> dict[str, Any]:
    mib = 2**20
    samples = [{"part": k + 1, "done": (k + 1) * 100, "elapsed_s": k + 1.0, "disk_bytes": 1000 * (k + 1),
                "wf_per_s": rates[0] if k == 0 else rates[1],
                "rss": {n: v * mib for n, v in (first if k == 0 else last).items()}} for k in range(10)]
    return {"n": 1000, "in_flight": 100, "config": "a=1 s=64 driver=client", "samples": samples,
            "old_result_p50_ms": 1.0, "old_result_p99_ms": p99}


def test_the_rss_target_is_over_all_processes_and_each_ones_growth_is_shown() -> None:
    out = table(_row({"log": 100, "sup": 100}, {"log": 125, "sup": 100}, (1000, 950), 4.0))
    assert "log 1.25x, sup 1.00x; all 1.12x" in out
    assert "MET     end RSS of all coordinator processes <= 1.15x RSS at 10% (1.12x)" in out
    assert "MET     last tenth >= 0.9x" in out and "MET     old-result p99 < 5 ms" in out


def test_each_target_can_fail() -> None:
    out = table(_row({"log": 100, "sup": 100}, {"log": 140, "sup": 100}, (1000, 850), 6.0))
    assert "NOT MET end RSS of all coordinator processes <= 1.15x RSS at 10% (1.20x)" in out
    assert "NOT MET last tenth >= 0.9x" in out and "NOT MET old-result p99 < 5 ms (6.00 ms)" in out
