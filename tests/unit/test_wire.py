"""Records cross Ray as their wire maps: what a LogActor takes back is the record sent,
and a map that is not a record is refused before anything is journaled."""

from __future__ import annotations

import pytest

from actors.log import _records
from actors.records import Completed, ModeChanged, Started, Step, Submitted


def test_a_record_sent_as_its_wire_map_comes_back_the_same() -> None:
    sent = [Submitted("w1", "tests:T", {"x": 1}, 1.0, deployment="d-1", start_at=5.0), Started("w1", 2, 1.5),
            Step("w1", 0, "svc", {"v": [1, 2]}, t=2.0, attempt=2),
            Step("w1", 0, "undo", None, compensation=True, t=2.5, attempt=2),
            Completed("w1", {"ok": True}, 3.0), ModeChanged("suspended_slow", True, 4.0)]
    assert _records([r.to_wire() for r in sent]) == sent


@pytest.mark.parametrize("bad", [{"k": "nonsense", "w": "w1"}, {"w": "w1"}, {"k": "started"}, "started"])
def test_a_map_that_is_not_a_record_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="not a journal record"):
        _records([{"k": "started", "w": "w0", "attempt": 1, "t": 0.0}, bad])  # type: ignore[list-item]


def test_a_record_object_from_a_caller_of_an_earlier_version_is_taken_as_it_is() -> None:
    sent = [Started("w1", 1, 1.0), ModeChanged("normal", False, 2.0)]
    assert _records([sent[0].to_wire(), sent[1]]) == sent  # type: ignore[list-item]
