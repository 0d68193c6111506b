"""The scale-out bench's figures and report (`bench.scaleout`), from synthetic legs: no Ray, no clock."""

from __future__ import annotations

from collections import namedtuple

import pytest

from bench.scaleout import Leg, _busy, limits, report, summarize

ONE = Leg("one", 3000, 1500.0, 33.0, 40.0, started=100.0, ended=102.0)
PAIR = [Leg("a", 3000, 700.0, 70.0, 90.0, started=200.0, ended=204.0),
        Leg("b", 3000, 800.0, 60.0, 80.0, started=200.5, ended=204.5)]


def test_summarize_sums_the_pair_and_divides_by_the_one() -> None:
    s = summarize(ONE, PAIR, cpu_one_s=3.0, cpu_pair_s=7.2, cores=2)
    assert s["one_wf_per_s"] == 1500.0
    assert s["each_wf_per_s"] == [700.0, 800.0]
    assert s["sum_wf_per_s"] == 1500.0
    assert s["ratio"] == pytest.approx(1.0)
    # 6,000 workflows from the first start (200.0) to the last end (204.5); both ran during 200.5-204.0.
    assert s["combined_wf_per_s"] == pytest.approx(6000 / 4.5)
    assert s["overlap"] == pytest.approx(3.5 / 4.5)
    assert s["cpu_s_per_wf_one"] == pytest.approx(3.0 / 3000)
    assert s["cpu_s_per_wf_pair"] == pytest.approx(7.2 / 6000)
    assert s["busy_one"] == pytest.approx(3.0 / (2.0 * 2))
    assert s["busy_pair"] == pytest.approx(7.2 / (4.5 * 2))
    assert s["errors"] == 0


def test_a_pair_that_did_not_overlap_and_missing_cpu_figures() -> None:
    apart = [Leg("a", 100, 50.0, 1.0, 2.0, 0.0, 2.0), Leg("b", 100, 50.0, 1.0, 2.0, 3.0, 5.0, errors=2)]
    s = summarize(Leg("one", 100, 0.0, 0.0, 0.0, 0.0, 0.0), apart)
    assert s["overlap"] == 0.0
    assert s["ratio"] == 0.0  # no division by a zero rate
    assert s["cpu_s_per_wf_one"] is None and s["busy_pair"] is None
    assert s["errors"] == 2


def test_report_prints_every_figure_placement_and_the_machine_limit() -> None:
    s = summarize(ONE, PAIR, cpu_one_s=3.0, cpu_pair_s=7.2, cores=2, host_busy_one=0.9, host_busy_pair=0.97)
    placement = {"one": {"supervisor": "head", "journal": "worker-1", "CommandActors": "worker-2"},
                 "a": {"supervisor": "worker-1", "journal": "worker-1", "CommandActors": "head"}}
    text = report(s, placement, cores=2, nodes=3, n=3000)
    for figure in ("3,000 workflows per coordinator", "1,500 wf/s", "700 wf/s", "800 wf/s", "1.00x",
                   "p50   33.0 ms", "p99   40.0 ms", "p99   90.0 ms", "CPU/wf 1.00 ms", "CPU/wf 1.20 ms",
                   "CPU busy: this run 75%, the machine 90% of 2 cores",
                   "CPU busy: this run 80%, the machine 97% of 2 cores", "1,333 wf/s", "78% of it",
                   "correctness:        ok",
                   "one: supervisor on head, journal on worker-1, CommandActors on worker-2"):
        assert figure in text, figure
    flat = " ".join(line.strip() for line in text.splitlines())
    assert limits(2, 3) in flat


def test_report_flags_errors_and_cpu_not_measured() -> None:
    s = summarize(ONE, [PAIR[0], Leg("b", 3000, 800.0, 60.0, 80.0, 200.5, 204.5, errors=3)])
    text = report(s)
    assert "3 ERRORS" in text
    assert "CPU/wf n/a" in text
    assert "placement" not in text


def test_limits_names_the_shared_cores() -> None:
    text = limits(2, 3)
    assert "All 3 Ray nodes" in text and "same 2 CPU core(s)" in text
    assert "bounded by the CPU" in text and "not by the design" in text


def test_busy_is_the_machines_non_idle_share_without_counting_guest_time_twice() -> None:
    Times = namedtuple("Times", "user nice system idle iowait guest guest_nice")
    before = Times(10.0, 0.0, 5.0, 100.0, 1.0, 0.0, 0.0)
    after = Times(13.0, 0.0, 6.0, 103.0, 2.0, 3.0, 0.0)  # 4 s busy, 4 s idle or waiting; guest is within user
    assert _busy(before, after) == pytest.approx(0.5)
    assert _busy(before, before) == 0.0
