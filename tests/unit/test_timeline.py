"""Each outcome's time and attempt: optional fields of the step records, written by the
runner, read back from older journals without them, and the workflow's history."""

from __future__ import annotations

import time

import msgpack
import pytest

from actors.inprocess import LocalCoordinator
from actors.journal import codec
from actors.records import Step, from_wire
from workflows.errors import UnknownWorkflow
from workflows.testing import Echo, Flaky


def wire(step: Step, seq: int = 7) -> codec.Record:
    return {**step.to_wire(), "v": codec.VERSION, "q": seq}


def test_a_step_with_time_and_attempt_round_trips() -> None:
    for step in (Step("w", 0, "flights", {"id": 1}, t=1700000000.25, attempt=3),
                 Step("w", 2, "undo-flights", None, compensation=True, t=1.5, attempt=1)):
        records, _ = codec.scan(codec.encode(wire(step)))
        assert from_wire(records[0]) == step


def test_an_old_step_record_reads_without_them() -> None:
    old = {"v": codec.VERSION, "q": 3, "k": "outcome", "w": "w", "step": 0, "service": "s", "value": 1}
    assert "t" not in Step("w", 0, "s", 1).to_wire()  # not written when unknown
    framed, _ = codec.scan(codec.encode(old))
    legacy, _ = codec.scan(codec.legacy_frame(msgpack.packb(old, use_bin_type=True)))  # a format-1 frame
    for records in (framed, legacy):
        step = from_wire(records[0])
        assert isinstance(step, Step) and (step.t, step.attempt) == (None, None) and step.value == 1


async def test_the_runner_records_each_steps_time_and_attempt(coord: LocalCoordinator) -> None:
    before = time.time()
    wid = await coord.core.submit(Flaky(failures=1))  # its one step on attempt 1, the end on attempt 2
    assert (await coord.core.result(wid, 5))["attempts"] == 2
    other = await coord.core.submit(Echo("x", steps=2))
    await coord.core.result(other, 5)
    history = await coord.core.history(wid)
    kinds = [r["k"] for r in history]  # a ``started`` may land after the records of its attempt
    assert kinds[0] == "submitted" and kinds[-1] == "completed" and kinds.count("outcome") == 1
    step = history[kinds.index("outcome")]
    assert step["attempt"] == 1 and before <= step["t"] <= time.time()
    assert [r["attempt"] for r in await coord.core.history(other) if r["k"] == "outcome"] == [1, 1]
    with pytest.raises(UnknownWorkflow):
        await coord.core.history("no-such-workflow")
