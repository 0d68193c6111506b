"""`actors.logs`: JSON lines that parse, the process's keys on every line, level filtering,
console lines on a terminal and JSON elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from actors import logs
from actors.options import Options
from workflows import Command, Context


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_parse_and_carry_the_process_keys() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out, component="supervisor", node_id="abc123", namespace="ns")
    log = structlog.get_logger("journal")
    log.info("segment_sealed", up_to=7, where=object())  # a value JSON cannot hold is written as its repr
    logs.bind_workflow(log, "w-1", 3).warning("attempt_parked", kind="delayed")
    first, second = lines(out)
    assert first["event"] == "segment_sealed" and first["up_to"] == 7 and first["where"].startswith("<object")
    for line in (first, second):
        assert line["component"] == "supervisor" and line["node_id"] == "abc123" and line["namespace"] == "ns"
        assert line["logger"] == "journal"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
    assert first["level"] == "info" and second["level"] == "warning"
    assert second["workflow_id"] == "w-1" and second["attempt"] == 3 and "workflow_id" not in first
    assert list(second)[:5] == ["timestamp", "level", "event", "component", "node_id"]


def test_every_line_has_component_and_node_id_even_unbound() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    structlog.get_logger().info("started")
    [line] = lines(out)
    # The Ray node of this process when it has a connection (the session's Ray, when
    # the Ray tests ran first), else null.
    assert line["component"] == "unknown" and line["node_id"] == logs.ray_node_id()
    assert "logger" not in line


def test_lines_below_the_level_are_dropped() -> None:
    out = io.StringIO()
    logs.configure("warning", "json", stream=out, component="cli")
    log = structlog.get_logger()
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line["event"] for line in lines(out)] == ["w", "e"]
    logs.configure("debug", "json", stream=out, component="cli")
    log.debug("d2")  # a logger made before `configure` follows the new level
    assert lines(out)[-1]["event"] == "d2"


def test_auto_is_console_on_a_terminal_and_json_elsewhere() -> None:
    tty, pipe = Terminal(), io.StringIO()
    logs.configure("info", "auto", stream=tty, component="cli", node_id="n1")
    structlog.get_logger("runner").info("mode_changed", mode="normal")
    text = tty.getvalue()
    assert not text.startswith("{") and "mode_changed" in text
    assert "component=cli" in text and "node_id=n1" in text and "mode=normal" in text and "[runner]" in text
    logs.configure("info", "auto", stream=pipe, component="cli")
    structlog.get_logger().info("mode_changed")
    assert lines(pipe)[0]["event"] == "mode_changed"
    logs.configure("info", "json", stream=tty, component="cli")  # an explicit format wins
    structlog.get_logger().info("forced")
    assert json.loads(tty.getvalue().splitlines()[-1])["event"] == "forced"


def test_exceptions_stay_on_one_json_line() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out, component="cli")
    try:
        raise ValueError("bad")
    except ValueError:
        structlog.get_logger().exception("failed")
    [line] = lines(out)
    assert line["level"] == "error" and "ValueError: bad" in line["exception"]


async def test_scope_binds_per_task() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out, component="command")
    log = structlog.get_logger("runner")

    async def attempt(wid: str, n: int) -> None:
        with logs.scope(workflow_id=wid, attempt=n):
            await asyncio.sleep(0)
            log.info("step_done")

    await asyncio.gather(attempt("a", 1), attempt("b", 2))
    log.info("idle")
    got = {(line.get("workflow_id"), line.get("attempt")) for line in lines(out)}
    assert got == {("a", 1), ("b", 2), (None, None)}


def test_without_a_stream_lines_follow_stderr() -> None:
    first, second = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(first):
        logs.configure("info", "json", component="cli")
        structlog.get_logger().info("one")
    first.close()  # a captured stderr that is gone is not written to
    with contextlib.redirect_stderr(second):
        structlog.get_logger().info("two")
    assert [line["event"] for line in lines(second)] == ["two"]


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.configure("loud")
    with pytest.raises(ValueError, match="log format"):
        logs.configure("info", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Options(log_format="xml")
    assert Options().log_format == "auto"


async def test_a_healthy_run_at_info_prints_no_line_per_workflow() -> None:
    """Hundreds of workflows, some without steps (their ``started`` append can land after
    their end: a benign race), run at ``info`` by the in-process coordinator: a few lines
    for the process, none for any one workflow."""
    from actors.inprocess import LocalCoordinator
    from tests.unit.local import opts
    from workflows.testing import Echo

    out = io.StringIO()
    logs.configure("info", "json", stream=out, component="supervisor")
    c = LocalCoordinator(opts(command_actors=2, slots_per_actor=32, max_cmds=500))
    await c.start()
    try:
        ids = await c.core.submit_many([Echo(i, steps=i % 3) for i in range(300)])
        done: dict[str, Any] = {}
        while len(done) < len(ids):
            done.update(await c.core.wait([w for w in ids if w not in done], 10))
        assert {d["state"] for d in done.values()} == {"completed"}
    finally:
        await c.close()
    got = lines(out)
    assert [line for line in got if "workflow_id" in line] == []
    assert len(got) <= 5, got


@dataclass
class Chatty(Command):
    """Logs one line from inside its attempt, through ``ctx.log`` and a module logger."""

    async def exec(self, ctx: Context) -> str:
        ctx.log.info("inside_attempt")
        structlog.get_logger("gateway").info("service_called")
        return "ok"


async def test_an_attempt_on_a_deployment_logs_its_workflow_attempt_and_deployment() -> None:
    from actors.records import Dispatch, Record, Report
    from actors.runner import Runner

    out = io.StringIO()
    logs.configure("debug", "json", stream=out, component="command")
    reports: list[Report] = []

    async def append(records: list[Record]) -> list[Any]:
        return [None] * len(records)

    async def report(r: Report) -> None:
        reports.append(r)

    runner = Runner(append, None, report, None, 1 << 20, deployment="orders-v2")  # type: ignore[arg-type]
    await runner.run([Dispatch("w-7", "tests.unit.test_logs:Chatty", {}, 3, "inc", fresh=True)])
    assert [r.result for r in reports] == ["ok"]
    inside = [line for line in lines(out) if line["event"] in ("inside_attempt", "service_called")]
    assert len(inside) == 2
    for line in inside:
        assert (line["workflow_id"], line["attempt"], line["deployment"]) == ("w-7", 3, "orders-v2")
    structlog.get_logger().info("between_attempts")
    assert "deployment" not in lines(out)[-1]


def test_a_command_actor_knows_its_deployment_from_its_name() -> None:
    pytest.importorskip("ray")
    from actors.command import deployment_of

    assert deployment_of("command-d-3f2a-12") == "d-3f2a"
    assert deployment_of("command-default-0") == "default"
    assert deployment_of(0) == "" and deployment_of("other") == ""
