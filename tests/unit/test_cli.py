"""The command line without a cluster: parsing, the environment, exit codes, rendering,
``ls``'s filters and a ``ray start`` that fails."""

from __future__ import annotations

import argparse
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from cluster.cli import main, parser, render
from cluster.cli.args import service, settle, when
from cluster.cli.listing import Query, collect

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield  # `main` configures the process's logs: leave the next test structlog's defaults
    structlog.reset_defaults()


def parse(*argv: str, env: dict[str, str] | None = None, tty: bool = False) -> argparse.Namespace:
    return settle(parser().parse_args(argv), env or {}, tty)


def one_error_line(capsys: pytest.CaptureFixture[str], text: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err
    return lines[0]


def test_common_options_go_before_or_after_the_command() -> None:
    before = parse("--namespace", "ns", "--address", "h:1", "status", "w")
    after = parse("status", "w", "--namespace", "ns", "--address", "h:1", "--log-format", "json")
    for args in (before, after):
        assert (args.namespace, args.address, args.id) == ("ns", "h:1", "w")
    assert after.log_format == "json" and before.log_format == "auto" and before.log_level == "warning"
    assert parse("--namespace", "first", "stats").namespace == "first"  # not reset by the subcommand's default


def test_environment_fills_what_the_command_line_leaves_out() -> None:
    env = {"COORDINATOR_NAMESPACE": "from-env", "RAY_ADDRESS": "10.0.0.1:6379"}
    args = parse("stats", env=env)
    assert (args.namespace, args.address) == ("from-env", "10.0.0.1:6379")
    assert parse("stats", "--namespace", "flag", env=env).namespace == "flag"
    assert (parse("stats").namespace, parse("stats").address) == ("coordinator", None)


def test_output_is_a_table_on_a_terminal_and_json_otherwise() -> None:
    assert parse("ls", tty=True).output == "table" and parse("ls").output == "json"
    assert parse("ls", "-o", "json", tty=True).output == "json"
    assert parse("stats", "--output", "table").output == "table"


def test_usage_errors_exit_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 1
    one_error_line(capsys, "invalid choice")
    assert main(["status"]) == 1
    one_error_line(capsys, "coordinator status --help")
    assert main(["ls", "--limit", "0"]) == 1
    one_error_line(capsys, ">= 1")
    assert main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["payments", "payments=", "payments=ftp://host", "=http://host", "_x=http://h",
                                 "pay-ments=http://h", "p=http://[bad"])
def test_a_bad_gateway_service_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        service(bad)
    assert main(["start", "--gateway-service", bad]) == 1
    one_error_line(capsys, "NAME=URL")


def test_gateway_services_parse() -> None:
    args = parse("start", "--gateway-service", "payments=http://10.0.0.5:8080", "--gateway-service", "hotels=https://h")
    assert dict(args.gateway_service) == {"payments": "http://10.0.0.5:8080", "hotels": "https://h"}


def test_times_are_iso_or_an_age() -> None:
    assert when("10m", NOW) == NOW - 600
    assert when("1h30m", NOW) == NOW - 5400
    assert when("2d", NOW) == NOW - 2 * 86400 and when("90s", NOW) == NOW - 90
    assert when("2026-05-01T12:00:00Z") == NOW
    assert when("2026-05-01T12:00:00") == NOW  # naive: UTC
    assert when("2026-05-01T14:00:00+02:00") == NOW
    for bad in ("yesterday", "10", "m", "", "10x"):
        with pytest.raises(argparse.ArgumentTypeError):
            when(bad, NOW)


def status(wid: str, t: float, type_: str = "app.cmds:Book", state: str = "completed") -> dict[str, Any]:
    return {"id": wid, "type": type_, "state": state, "attempts": 1, "outcomes": [], "error": None,
            "next_retry_at": None, "submitted_at": t, "finished_at": t + 1}


def test_ls_reads_pages_until_it_has_the_rows_asked_for() -> None:
    found = [status("d", NOW - 100), status("b", NOW - 100, "app.cmds:Refund"), status("c", NOW - 200),
             status("a", NOW - 300)]  # in the supervisor's order
    asked: list[tuple[str | None, int]] = []

    def fetch(cursor: str | None, limit: int) -> dict[str, Any]:  # two a page, to count the pages read
        asked.append((cursor, limit))
        n = int(cursor or 0)
        return {"items": found[n:n + 2], "next": str(n + 2) if n + 2 < len(found) else None}

    page, total = collect(fetch, Query())
    assert [s["id"] for s in page] == ["d", "b", "c", "a"] and total == 4 and len(asked) == 2
    assert [s["id"] for s in collect(fetch, Query(type_part="REFUND"))[0]] == ["b"]
    assert [s["id"] for s in collect(fetch, Query(since=NOW - 200))[0]] == ["d", "b", "c"]
    assert [s["id"] for s in collect(fetch, Query(until=NOW - 200))[0]] == ["a"]
    asked.clear()
    page, total = collect(fetch, Query(limit=1))
    assert [s["id"] for s in page] == ["d"] and total is None and len(asked) == 1  # one more row: more follow
    page, total = collect(fetch, Query(limit=2, offset=1))
    assert [s["id"] for s in page] == ["b", "c"] and total == 4
    assert "2-3 of 4, in flight then finished, newest first; next page: --offset 3" in render.workflows(page, total, 1)
    assert render.workflows(page, None, 1).endswith("2-3, in flight then finished, newest first; next page: --offset 3")
    assert render.workflows([], 0, 0) == "no workflows match"


def test_times_render_as_iso_utc() -> None:
    assert render.iso(NOW) == "2026-05-01T12:00:00.000Z"
    assert render.iso(NOW, precise=False) == "2026-05-01T12:00:00Z"
    shown = json.loads(render.as_json([status("a", NOW)]))
    assert shown[0]["submitted_at"] == "2026-05-01T12:00:00.000Z" and shown[0]["next_retry_at"] is None


def test_tables_are_aligned() -> None:
    lines = render.table(["id", "state"], [["a-long-id", "completed"], ["b", "delayed"]]).splitlines()
    assert lines == ["ID         STATE", "a-long-id  completed", "b          delayed"]
    s = status("w-1", NOW, state="delayed") | {
        "error": {"type": "builtins.ValueError", "message": "no\nroom", "traceback": "..."},
        "next_retry_at": NOW + 5, "finished_at": None, "outcomes": [[0, "pay", {"ok": True}]]}
    text = render.status(s)
    assert "last error  builtins.ValueError: no room" in text
    assert "next retry  2026-05-01T12:00:05Z" in text and "finished    -" in text
    assert "0     pay      {\"ok\": true}" in text
    assert render.cell("x" * 100, 10) == "xxxxxxx..." and render.cell("mod.ule:Cls", 8, keep_end=True) == "...e:Cls"


def test_a_failing_ray_start_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    from cluster.cli import ops

    fake = tmp_path / "ray"
    fake.write_text("#!/bin/sh\necho 'Usage stats collection is disabled.'\n"
                    "echo 'ConnectionError: ports 6379 in use by another process' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    def no_cluster(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(ops, "ray_executable", lambda: str(fake))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["start", "--storage", str(tmp_path / "journal")]) == 1
    line = one_error_line(capsys, "`ray start --head` failed (exit 1)")
    assert line.endswith("ports 6379 in use by another process")
    monkeypatch.setattr(ops, "ray_executable", lambda: str(tmp_path / "missing"))
    assert main(["start", "--storage", str(tmp_path / "journal")]) == 1
    one_error_line(capsys, "`ray` command is not installed")


def test_an_address_nothing_answers_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["stats", "--address", f"127.0.0.1:{port}"]) == 1
    one_error_line(capsys, f"no Ray cluster answers at 127.0.0.1:{port}")


def test_cancel_and_terminate_take_an_id_and_a_reason() -> None:
    for verb in ("cancel", "terminate"):
        args = parse(verb, "wf-1", "--reason", "by hand")
        assert (args.cmd, args.id, args.reason) == (verb, "wf-1", "by hand")
        assert parse(verb, "wf-1").reason == ""
