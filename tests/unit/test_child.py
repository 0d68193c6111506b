"""ctx.child(cmd, workflow_id=None): the child's id is a step, its end wakes the parent; once, across restarts."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from actors.inprocess import LocalCoordinator
from actors.supervision.children import Children
from tests.unit.local import kinds, opts, wait_state
from workflows import Command, Context
from workflows.errors import AtCapacity, CommandFailed

GATES: dict[str, asyncio.Event] = {}
CALLS: Counter[str] = Counter()


def gate(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


@dataclass
class Kid(Command):
    """One step, then waits for its gate (if ``gated``); fails if told to."""

    key: str
    gated: bool = False
    fails: bool = False

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("kid", self._call)
        if self.gated:
            await gate(self.key).wait()
        if self.fails:
            raise ValueError(f"kid {self.key} refused")
        return f"kid-{self.key}"

    def _call(self) -> str:
        CALLS[f"{self.key}/kid"] += 1
        return "done"


@dataclass
class Parent(Command):
    """A step, the child ``Kid(key, gated, fails)`` (with ``child_id`` if given), a step; undoes its steps."""

    key: str
    gated: bool = False
    fails: bool = False
    child_id: str | None = None

    async def exec(self, ctx: Context) -> Any:
        await ctx.step("before", self._call, "before")
        got = await ctx.child(Kid(self.key, self.gated, self.fails), self.child_id)
        await ctx.step("after", self._call, "after")
        return {"child": got}

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        CALLS[f"{self.key}/compensate:{type(error).__name__}"] += 1

    def _call(self, name: str) -> str:
        CALLS[f"{self.key}/{name}"] += 1
        return name


async def test_a_child_runs_and_its_result_returns_to_the_parent(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Parent("ok", gated=True), "p-ok")
    status = await wait_state(coord, wid, "waiting")
    assert status["waiting_for"] == "coordinator.child:p-ok/child/1"
    child = await wait_state(coord, "p-ok/child/1", "running")
    assert child["type"].endswith("test_child:Kid")
    assert coord.core.dispatcher.running.keys() == {"p-ok/child/1"}  # the parent gave its slot back
    gate("ok").set()
    assert await coord.core.result(wid, 5) == {"child": "kid-ok"}
    assert await coord.core.result("p-ok/child/1", 5) == "kid-ok"
    outcomes = (await coord.core.status(wid))["outcomes"]
    assert [o[1] for o in outcomes] == ["before", "coordinator.child", "coordinator.child.end", "after"]
    assert outcomes[1][2]["id"] == "p-ok/child/1" and outcomes[2][2]["state"] == "completed"
    assert CALLS["ok/before"] == CALLS["ok/kid"] == CALLS["ok/after"] == 1
    assert kinds(coord, "p-ok/child/1").count("submitted") == 1
    assert coord.core.stats()["in_flight"] == 0


async def test_a_failed_child_fails_the_parent_which_compensates(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Parent("bad", fails=True), "p-bad")
    with pytest.raises(CommandFailed, match="kid bad refused") as failed:
        await coord.core.result(wid, 5)
    assert failed.value.error_type == "workflows.errors.CommandFailed"
    assert (await coord.core.status(wid))["state"] == "compensated"
    assert (await coord.core.status("p-bad/child/1"))["state"] == "compensated"
    assert CALLS["bad/compensate:CommandFailed"] == 1 and CALLS["bad/after"] == 0


async def test_a_child_id_taken_by_another_command_fails_the_parent(coord: LocalCoordinator) -> None:
    await coord.core.result(await coord.core.submit(Kid("other"), "taken"), 5)
    wid = await coord.core.submit(Parent("taken", child_id="taken"), "p-taken")
    with pytest.raises(CommandFailed, match="taken by another workflow"):
        await coord.core.result(wid, 5)
    assert CALLS["taken/kid"] == 0


async def test_a_child_that_ended_already_answers_at_once(coord: LocalCoordinator) -> None:
    await coord.core.result(await coord.core.submit(Kid("early"), "early-kid"), 5)
    wid = await coord.core.submit(Parent("early", child_id="early-kid"), "p-early")
    assert await coord.core.result(wid, 5) == {"child": "kid-early"}
    assert CALLS["early/kid"] == 1 and kinds(coord, "early-kid").count("submitted") == 1


async def restarted_while_the_child_runs(name: str) -> tuple[LocalCoordinator, str]:
    """A coordinator restarted while parent ``p-<name>`` waits on its gated child (running):
    the fresh coordinator, started, and the parent's id."""
    options = opts()
    c = LocalCoordinator(options)
    await c.start()
    wid = await c.core.submit(Parent(name, gated=True), f"p-{name}")
    await wait_state(c, wid, "waiting")
    await wait_state(c, f"p-{name}/child/1", "running")
    await c.close()
    fresh = LocalCoordinator(options)
    await fresh.start()
    return fresh, wid


async def test_a_restart_while_the_child_runs_submits_no_second_child() -> None:
    fresh, wid = await restarted_while_the_child_runs("restart")
    try:
        assert (await fresh.core.status(wid))["state"] == "waiting"
        await wait_state(fresh, "p-restart/child/1", "running")
        gate("restart").set()
        assert await fresh.core.result(wid, 5) == {"child": "kid-restart"}
        assert kinds(fresh, "p-restart/child/1").count("submitted") == 1
        assert CALLS["restart/before"] == 1 and CALLS["restart/after"] == 1
        assert CALLS["restart/kid"] == 1  # its step was journaled before the restart
    finally:
        await fresh.close()


async def test_a_restart_delivers_an_end_that_was_not_journaled_to_the_parent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    options = opts()
    c = LocalCoordinator(options)
    monkeypatch.setattr(Children, "ended", lambda self, wid, wf=None: None)  # the end is lost with the process
    await c.start()
    wid = await c.core.submit(Parent("lost"), "p-lost")
    await wait_state(c, wid, "waiting")
    await c.core.result("p-lost/child/1", 5)
    assert (await c.core.status(wid))["state"] == "waiting"
    await c.close()
    monkeypatch.undo()
    fresh = LocalCoordinator(options)
    await fresh.start()
    try:
        assert await fresh.core.result(wid, 5) == {"child": "kid-lost"}
        assert CALLS["lost/kid"] == 1
    finally:
        await fresh.close()


async def test_children_pass_max_cmds_rather_than_deadlock() -> None:
    c = LocalCoordinator(opts(max_cmds=1, admission_timeout_s=0.1))
    await c.start()
    try:
        wid = await c.core.submit(Parent("full", gated=True), "p-full")
        await wait_state(c, wid, "waiting")
        await wait_state(c, "p-full/child/1", "running")
        assert c.core.stats()["in_flight"] == 2
        with pytest.raises(AtCapacity):
            await c.core.submit(Kid("outside"), "outside")
        gate("full").set()
        assert await c.core.result(wid, 5) == {"child": "kid-full"}
        assert c.core.stats()["in_flight"] == 0
    finally:
        await c.close()


async def test_cancelling_a_waiting_parent_cancels_its_child(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Parent("cascade", gated=True), "p-cascade")
    await wait_state(coord, wid, "waiting")
    await wait_state(coord, "p-cascade/child/1", "running")
    assert await coord.core.cancel(wid, "no trip") is True
    gate("cascade").set()
    with pytest.raises(CommandFailed, match="Cancelled"):
        await coord.core.result(wid, 5)
    with pytest.raises(CommandFailed, match="parent p-cascade was stopped: no trip"):
        await coord.core.result("p-cascade/child/1", 5)
    assert (await coord.core.status("p-cascade/child/1"))["state"] == "cancelled"
    assert CALLS["cascade/compensate:CommandFailed"] == 1 and CALLS["cascade/after"] == 0
    assert coord.core.stats()["in_flight"] == 0


async def test_terminating_a_waiting_parent_terminates_its_child(coord: LocalCoordinator) -> None:
    wid = await coord.core.submit(Parent("term", gated=True), "p-term")
    await wait_state(coord, wid, "waiting")
    await wait_state(coord, "p-term/child/1", "running")
    assert await coord.core.terminate(wid) is True
    gate("term").set()
    await wait_state(coord, "p-term/child/1", "terminated")
    assert (await coord.core.status(wid))["state"] == "terminated"
    assert not [k for k in CALLS if k.startswith("term/compensate")]


@dataclass
class BigChild(Command):
    """A parent whose child's fields are over the supervisor's payload limit."""

    async def exec(self, ctx: Context) -> Any:
        return await ctx.child(Kid("x" * 4096))


async def test_a_refused_child_is_refused_again_after_a_restart_that_lost_the_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    options = opts(max_payload_bytes=1024)
    c = LocalCoordinator(options)

    async def lost(self: Children, parent: str, cid: str, end: dict[str, Any]) -> None:
        return None

    monkeypatch.setattr(Children, "_deliver", lost)  # the refusal is lost with the process
    await c.start()
    wid = await c.core.submit(BigChild(), "p-big")
    await wait_state(c, wid, "waiting")
    await c.close()
    monkeypatch.undo()
    fresh = LocalCoordinator(options)
    await fresh.start()
    try:
        with pytest.raises(CommandFailed, match="over the 1024-byte limit"):
            await fresh.core.result(wid, 5)
        assert "p-big/child/0" not in fresh.core.table.workflows
    finally:
        await fresh.close()


async def test_a_parent_being_cancelled_asks_for_no_child(coord: LocalCoordinator) -> None:
    from actors.records import Kind, Report
    from actors.workflow_state import Workflow

    parent = Workflow("p-stopped", "tests.unit.test_child:Parent", {"key": "stopped"}, 0.0)
    parent.stop = "cancel"
    coord.core.table.put(parent)
    request = {"id": "p-stopped/child/1", "type": "tests.unit.test_child:Kid", "fields": {"key": "stopped"}}
    report = Report("p-stopped", 1, coord.core.incarnation, Kind.WAITING, request,
                    reason="coordinator.child:p-stopped/child/1")
    assert await coord.core.children.take([report], coord.core.incarnation) == [report]
    assert "p-stopped/child/1" not in coord.core.table.workflows


async def test_cancelling_a_parent_after_a_restart_cancels_its_child() -> None:
    fresh, wid = await restarted_while_the_child_runs("later")
    try:
        assert await fresh.core.cancel(wid, "after restart") is True
        gate("later").set()
        await wait_state(fresh, "p-later/child/1", "cancelled")
        await wait_state(fresh, wid, "cancelled")
    finally:
        await fresh.close()
