"""The suspension machine: every signal from every mode, held or not, and the SPEC §4.5 paths."""

from __future__ import annotations

import itertools

import pytest

from actors.supervision.modes import Mode, Signal, next_mode

N, SLOW, FAST = Mode.NORMAL, Mode.SUSPENDED_SLOW, Mode.SUSPENDED_FAST

# (mode, signal) -> (next when not held, next when held by an operator's suspend)
TABLE: dict[tuple[Mode, Signal], tuple[Mode, Mode]] = {
    (N, Signal.BLOCKED): (SLOW, SLOW),
    (SLOW, Signal.BLOCKED): (SLOW, SLOW),
    (FAST, Signal.BLOCKED): (SLOW, SLOW),  # a new Blocked in fast mode goes back to slow
    (N, Signal.RETRY_SUCCEEDED): (N, N),
    (SLOW, Signal.RETRY_SUCCEEDED): (FAST, FAST),
    (FAST, Signal.RETRY_SUCCEEDED): (FAST, FAST),
    (N, Signal.DRAINED): (N, N),
    (SLOW, Signal.DRAINED): (N, SLOW),  # held: intake stays closed until resume
    (FAST, Signal.DRAINED): (N, FAST),
    (N, Signal.SUSPEND): (SLOW, SLOW),
    (SLOW, Signal.SUSPEND): (SLOW, SLOW),
    (FAST, Signal.SUSPEND): (SLOW, SLOW),
    (N, Signal.RESUME): (N, N),
    (SLOW, Signal.RESUME): (N, N),
    (FAST, Signal.RESUME): (N, N),
}


def test_the_table_covers_every_mode_and_signal() -> None:
    assert set(TABLE) == set(itertools.product(Mode, Signal))


@pytest.mark.parametrize("held", [False, True], ids=["free", "held"])
@pytest.mark.parametrize(("mode", "signal"), list(TABLE), ids=lambda v: str(v.value))
def test_every_signal_from_every_mode(mode: Mode, signal: Signal, held: bool) -> None:
    assert next_mode(mode, signal, held=held) is TABLE[(mode, signal)][held]


def test_an_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        next_mode(N, "explode")  # type: ignore[arg-type]


def walk(mode: Mode, *signals: Signal, held: bool = False) -> list[Mode]:
    path = [mode]
    for signal in signals:
        path.append(next_mode(path[-1], signal, held=held))
    return path


def test_blocked_then_slow_then_fast_then_normal() -> None:
    path = walk(N, Signal.BLOCKED, Signal.RETRY_SUCCEEDED, Signal.RETRY_SUCCEEDED, Signal.DRAINED)
    assert path == [N, SLOW, FAST, FAST, N]


def test_a_new_blocked_in_fast_mode_goes_back_to_slow() -> None:
    path = walk(N, Signal.BLOCKED, Signal.RETRY_SUCCEEDED, Signal.BLOCKED, Signal.RETRY_SUCCEEDED, Signal.DRAINED)
    assert path == [N, SLOW, FAST, SLOW, FAST, N]


def test_an_operator_hold_outlasts_the_drain_until_resume() -> None:
    path = walk(N, Signal.SUSPEND, Signal.BLOCKED, Signal.RETRY_SUCCEEDED, Signal.DRAINED, held=True)
    assert path == [N, SLOW, SLOW, FAST, FAST]
    assert next_mode(path[-1], Signal.RESUME, held=True) is N


def test_modes_and_signals_are_their_journaled_strings() -> None:
    assert [m.value for m in Mode] == ["normal", "suspended_slow", "suspended_fast"]
    assert Mode("suspended_fast") is FAST  # the `mode` record is read back by value
