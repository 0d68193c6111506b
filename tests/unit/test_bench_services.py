"""The benchmark's services: idempotent by key, within a window that forgets the oldest key first."""

from __future__ import annotations

import pytest

from bench import sagas


def test_a_service_replays_a_key_it_remembers_and_forgets_the_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sagas, "KEY_WINDOW", 3)
    svc = sagas.KeyService("hotels", None)
    for key in ("a", "b", "c", "a", "d"):
        assert svc.serve(key) == {"svc": "hotels", "key": key, "ok": True}
    assert (svc.calls, svc.executions) == (5, 4)
    assert list(svc.results) == ["b", "c", "d"]  # "a" was the oldest when "d" came
    svc.serve("a")  # forgotten: executed again, and "b" leaves
    assert svc.executions == 5 and list(svc.results) == ["c", "d", "a"]
