"""The retry schedule: deterministic jitter, clamped delays, and the timer heap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.supervision.retry import TimerHeap, jitter, retry_delay

ids = st.text(min_size=1, max_size=20)
attempts = st.integers(1, 10_000)
spans = st.floats(min_value=1e-6, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(ids, attempts, spans)
def test_jitter_is_deterministic_and_within_bounds(wid: str, attempt: int, jitter_s: float) -> None:
    j = jitter(wid, attempt, jitter_s)
    assert -jitter_s <= j <= jitter_s
    assert jitter(wid, attempt, jitter_s) == j  # a replay computes the same schedule


def test_jitter_differs_across_attempts_and_workflows() -> None:
    draws = {jitter("wf-1", attempt, 0.1) for attempt in range(1, 51)}
    assert len(draws) == 50
    assert len({jitter(f"wf-{i}", 1, 0.1) for i in range(50)}) == 50
    assert jitter("a1", 2, 0.1) != jitter("a", 12, 0.1)  # the separator keeps (id, attempt) apart


def test_jitter_spreads_over_the_whole_range() -> None:
    draws = [jitter("wf", attempt, 1.0) for attempt in range(1, 2001)]
    assert min(draws) < -0.9 and max(draws) > 0.9
    assert abs(sum(draws) / len(draws)) < 0.1  # centred on zero


@pytest.mark.parametrize("jitter_s", [0.0, -1.0])
def test_no_jitter_when_jitter_s_is_zero(jitter_s: float) -> None:
    assert all(jitter("wf", attempt, jitter_s) == 0.0 for attempt in range(1, 20))
    assert retry_delay(0.2, jitter_s, "wf", 3) == 0.2


def test_retry_delay_is_interval_plus_jitter() -> None:
    assert retry_delay(5.0, 0.5, "wf", 2) == 5.0 + jitter("wf", 2, 0.5)


@settings(max_examples=200, deadline=None)
@given(ids, attempts, spans, st.floats(0, 10))
def test_retry_delay_is_clamped_at_zero(wid: str, attempt: int, jitter_s: float, interval_s: float) -> None:
    delay = retry_delay(interval_s, jitter_s, wid, attempt)
    assert delay == max(0.0, interval_s + jitter(wid, attempt, jitter_s))
    assert delay >= 0.0


def test_a_negative_sum_clamps_to_zero() -> None:
    attempt = next(a for a in range(1, 100) if jitter("wf", a, 1.0) < -0.5)  # a draw below -0.5
    assert retry_delay(0.1, 1.0, "wf", attempt) == 0.0
    assert retry_delay(0.0, 1.0, "wf", attempt) == 0.0


# --- TimerHeap ---------------------------------------------------------------------------------


def test_pop_due_returns_ids_due_by_now_earliest_first() -> None:
    timers = TimerHeap()
    for due, wid in [(3.0, "c"), (1.0, "a"), (2.0, "b"), (9.0, "z")]:
        timers.push(due, wid)
    assert len(timers) == 4 and timers.next_due() == 1.0
    assert timers.pop_due(0.5) == []
    assert timers.pop_due(2.0) == ["a", "b"]  # due at exactly now counts
    assert timers.pop_due(5.0) == ["c"]
    assert len(timers) == 1 and timers.next_due() == 9.0
    assert timers.pop_due(100.0) == ["z"]
    assert len(timers) == 0 and timers.next_due() is None


def test_equal_due_times_pop_in_push_order() -> None:
    timers = TimerHeap()
    for wid in "dcba":
        timers.push(1.0, wid)
    assert timers.pop_due(1.0) == list("dcba")


def test_the_latest_push_for_an_id_wins() -> None:
    timers = TimerHeap()
    timers.push(1.0, "a")
    timers.push(5.0, "a")  # later: the early entry is stale
    timers.push(2.0, "b")
    assert len(timers) == 2 and timers.next_due() == 2.0
    assert timers.pop_due(3.0) == ["b"]
    timers.push(0.5, "a")  # earlier again
    assert timers.next_due() == 0.5
    assert timers.pop_due(10.0) == ["a"]  # once, not once per push
    assert len(timers) == 0 and timers.pop_due(10.0) == []


def test_the_same_due_pushed_twice_fires_once() -> None:
    timers = TimerHeap()
    timers.push(1.0, "a")
    timers.push(1.0, "a")
    assert timers.pop_due(1.0) == ["a"] and timers.pop_due(1.0) == []


def test_discard() -> None:
    timers = TimerHeap()
    timers.push(1.0, "a")
    timers.push(2.0, "b")
    timers.discard("a")
    timers.discard("never-pushed")
    assert len(timers) == 1 and timers.next_due() == 2.0
    assert timers.pop_due(5.0) == ["b"]
    timers.push(3.0, "a")  # a discarded id can be scheduled again
    assert timers.pop_due(5.0) == ["a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 20), st.booleans()), max_size=40),
       st.integers(0, 20))
def test_timer_heap_matches_a_dict_model(ops: list[tuple[str, int, bool]], now: int) -> None:
    timers, model = TimerHeap(), {}
    for wid, due, discard in ops:
        if discard:
            timers.discard(wid)
            model.pop(wid, None)
        else:
            timers.push(float(due), wid)
            model[wid] = float(due)
    assert len(timers) == len(model)
    assert timers.next_due() == (min(model.values()) if model else None)
    fired = timers.pop_due(float(now))
    assert sorted(fired) == sorted(w for w, d in model.items() if d <= now)
    assert [model[w] for w in fired] == sorted(model[w] for w in fired)
    assert len(timers) == len(model) - len(fired)
