"""The `coordinator` command line against a real coordinator: answers, tables, filters and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Coordinator

pytestmark = pytest.mark.ray


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def cli(address: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run("--address", address, "--namespace", namespace, *args)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("error: ") and text in lines[-1], proc.stderr


def test_cli_operates_a_coordinator(ray_session: str, coordinator: Callable[..., Coordinator]) -> None:
    ns = coordinator().options.namespace
    done = cli(ray_session, ns, "submit", "workflows.testing:Echo", "--json", '{"value": 5}', "--id", "cli-1", "--wait")
    assert done.returncode == 0 and json.loads(done.stdout) == 5, done.stderr
    assert json.loads(cli(ray_session, ns, "result", "cli-1").stdout) == 5
    assert json.loads(cli(ray_session, ns, "status", "cli-1").stdout)["state"] == "completed"
    assert [s["id"] for s in json.loads(cli(ray_session, ns, "ls", "--state", "completed").stdout)] == ["cli-1"]
    assert json.loads(cli(ray_session, ns, "suspend").stdout)["mode"] == "suspended_slow"
    refused = cli(ray_session, ns, "submit", "workflows.testing:Echo", "--json", '{"value": 6}')
    one_line_error(refused, 1, "intake is closed")
    assert json.loads(cli(ray_session, ns, "resume").stdout)["mode"] == "normal"
    assert len(json.loads(cli(ray_session, ns, "outcomes", "echo").stdout)) == 2
    failed = cli(ray_session, ns, "submit", "workflows.testing:Fails", "--json", '{"steps": 1}', "--wait")
    one_line_error(failed, 2, "ValueError")


def test_cli_cancels_and_terminates(ray_session: str, coordinator: Callable[..., Coordinator], tmp_path: Path) -> None:
    ns = coordinator().options.namespace
    fields = json.dumps({"dir": str(tmp_path), "steps": 50, "sleep_s": 0.2})
    for verb, state in (("cancel", "cancelled"), ("terminate", "terminated")):
        wid = f"cli-{verb}"
        submitted = cli(ray_session, ns, "submit", "workflows.testing:Tracked", "--json", fields, "--id", wid)
        assert submitted.returncode == 0, submitted.stderr
        done = cli(ray_session, ns, verb, wid, "--reason", "by hand")
        assert done.returncode == 0 and json.loads(done.stdout) is True, done.stderr
        one_line_error(cli(ray_session, ns, "result", wid, "--timeout", "30"), 2, "Cancelled")
        status = json.loads(cli(ray_session, ns, "status", wid).stdout)
        assert status["state"] == state and "by hand" in status["error"]["message"]
        assert json.loads(cli(ray_session, ns, verb, wid).stdout) is False  # finished: a no-op


def test_cli_bad_input_is_one_line(ray_session: str, coordinator: Callable[..., Coordinator]) -> None:
    ns = coordinator().options.namespace
    one_line_error(cli(ray_session, ns, "submit", "no.such.module:X"), 1, "cannot be imported")
    one_line_error(cli(ray_session, ns, "submit", "workflows.testing:Nope"), 1, "not found")
    one_line_error(cli(ray_session, ns, "submit", "workflows.testing:Echo", "--json", "{oops"), 1, "not valid JSON")
    one_line_error(cli(ray_session, ns, "submit", "workflows.testing:Echo", "--json", '{"nope": 1}'), 1,
                   "do not fit")
    one_line_error(cli(ray_session, ns, "result", "missing-id"), 1, "missing-id")
    one_line_error(cli(ray_session, "nobody-here", "stats"), 1, "no coordinator is running")


def test_cli_journal_tools(ray_session: str, coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    ns, storage = c.options.namespace, c.options.storage
    assert cli(ray_session, ns, "submit", "workflows.testing:Echo", "--json", '{"value": 1}', "--wait").returncode == 0
    verify = json.loads(cli(ray_session, ns, "journal", "verify", storage).stdout)
    assert verify["ok"] and verify["records"] >= 5
    kinds = [json.loads(line)["k"] for line in cli(ray_session, ns, "journal", "dump", storage).stdout.splitlines()]
    assert kinds[0] == "epoch" and "submitted" in kinds and kinds.count("outcome") == 2
    wal = next((Path(storage.removeprefix("file://")) / "wal").glob("*.log"))
    data = bytearray(wal.read_bytes())
    data[30] ^= 0xFF
    broken = Path(storage.removeprefix("file://")).parent / "broken"
    (broken / "wal").mkdir(parents=True)
    (broken / "wal" / wal.name).write_bytes(bytes(data))
    one_line_error(cli(ray_session, ns, "journal", "verify", str(broken)), 1, "journal corrupt")


def test_cli_lists_filters_and_renders(ray_session: str, coordinator: Callable[..., Coordinator]) -> None:
    ns = coordinator().options.namespace
    for wid, kind in (("old-echo", "Echo"), ("fails", "Fails"), ("new-echo", "Echo")):
        fields = '{"value": 1}' if kind == "Echo" else '{"steps": 1}'
        run("submit", f"workflows.testing:{kind}", "--json", fields, "--id", wid, "--wait",
            "--address", ray_session, "--namespace", ns)  # the common options after the command
    env = {"RAY_ADDRESS": ray_session, "COORDINATOR_NAMESPACE": ns}  # or from the environment
    listed = json.loads(run("ls", env=env).stdout)
    assert [s["id"] for s in listed] == ["new-echo", "fails", "old-echo"]  # newest first
    assert all(ISO_UTC.fullmatch(s["submitted_at"]) and ISO_UTC.fullmatch(s["finished_at"]) for s in listed)
    assert [s["id"] for s in json.loads(run("ls", "--type", "echo", "--limit", "1", "--offset", "1", env=env).stdout)] \
        == ["old-echo"]
    assert [s["id"] for s in json.loads(run("ls", "--state", "compensated", "--since", "10m", env=env).stdout)] \
        == ["fails"]
    assert json.loads(run("ls", "--until", "2000-01-01T00:00:00Z", env=env).stdout) == []
    table = run("ls", "-o", "table", "--limit", "2", env=env).stdout.splitlines()
    assert table[0].split() == ["ID", "TYPE", "STATE", "ATT", "SUBMITTED", "FINISHED/RETRY", "LAST", "ERROR"]
    assert table[1].startswith("new-echo ")
    assert table[-1] == "1-2 of 3, in flight then finished, newest first; next page: --offset 2"
    assert table[0].index("STATE") == table[1].index("completed")  # aligned
    shown = run("status", "fails", "-o", "table", env=env).stdout
    assert re.search(r"^last error +builtins\.ValueError: step 1 rejected the request$", shown, re.M), shown
    assert re.search(r"^next retry +-$", shown, re.M) and re.search(r"^finished +\S+Z$", shown, re.M), shown
    stats = run("stats", "-o", "table", env=env).stdout
    assert re.search(r"^in flight +0 of max \d+$", stats, re.M) and re.search(r"^compensated +1$", stats, re.M)
    assert "echo" in run("outcomes", "echo", "-o", "table", env=env).stdout.splitlines()[1]


def test_cli_status_shows_the_next_retry(ray_session: str, coordinator: Callable[..., Coordinator]) -> None:
    ns = coordinator(slow_retry_interval_s=30.0, jitter_s=0.0).options.namespace
    assert cli(ray_session, ns, "submit", "workflows.testing:Flaky", "--id", "flaky").returncode == 0
    deadline = time.monotonic() + 60
    status = json.loads(cli(ray_session, ns, "status", "flaky").stdout)
    while status["state"] != "delayed" and time.monotonic() < deadline:  # each call takes a second or two
        status = json.loads(cli(ray_session, ns, "status", "flaky").stdout)
    assert status["state"] == "delayed" and ISO_UTC.fullmatch(status["next_retry_at"]), status
    shown = cli(ray_session, ns, "status", "flaky", "-o", "table").stdout
    assert re.search(r"^next retry +\S+Z$", shown, re.M) and re.search(r"^finished +-$", shown, re.M), shown


def test_cli_start_and_stop(ray_session: str, tmp_path: Path) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    started = cli(ray_session, ns, "start", "--storage", str(tmp_path / "journal"), "--command-actors", "1")
    try:
        assert started.returncode == 0, started.stderr
        summary = json.loads(started.stdout)
        assert summary["namespace"] == ns and summary["mode"] == "normal" and summary["address"]
        assert started.stderr == ""  # Ray's notes on connecting are not errors
    finally:
        stopped = cli(ray_session, ns, "stop")
    assert json.loads(stopped.stdout) == {"stopped": True}


def test_cli_usage_errors_are_one_line(ray_session: str) -> None:
    one_line_error(run("start", "--gateway-service", "payments"), 1, "expected NAME=URL")
    one_line_error(run("start", "--gateway-service", "payments=not a url"), 1, "expected NAME=URL")
    one_line_error(run("ls", "--since", "last week"), 1, "ISO 8601")
    one_line_error(run("report"), 1, "invalid choice")  # the actors' internal methods are not commands
    one_line_error(run("stats", "--address", "127.0.0.1:1"), 1, "no Ray cluster answers at 127.0.0.1:1")


def test_cli_resumes_signals_and_reads_events(ray_session: str, coordinator: Callable[..., Coordinator]) -> None:
    ns = coordinator().options.namespace
    submitted = cli(ray_session, ns, "submit", "workflows.testing:Stalls", "--id", "cli-paused")
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 30
    while json.loads(cli(ray_session, ns, "status", "cli-paused").stdout)["state"] != "paused":
        assert time.monotonic() < deadline, "the workflow never paused"
    assert json.loads(cli(ray_session, ns, "resume-workflow", "cli-paused").stdout) is True
    assert json.loads(cli(ray_session, ns, "result", "cli-paused", "--timeout", "30").stdout) == [
        f"cli-paused/{i}" for i in range(3)]
    assert json.loads(cli(ray_session, ns, "resume-workflow", "cli-paused").stdout) is False  # not paused

    assert cli(ray_session, ns, "submit", "workflows.testing:AwaitsSignal", "--id", "cli-waits").returncode == 0
    while json.loads(cli(ray_session, ns, "status", "cli-waits").stdout)["state"] != "waiting":
        assert time.monotonic() < deadline + 30, "the workflow never waited"
    assert json.loads(cli(ray_session, ns, "signal", "cli-waits", "go", "--json", '{"by": "ops"}').stdout) is True
    assert json.loads(cli(ray_session, ns, "signal", "cli-waits", "go").stdout) is False  # once per name
    assert json.loads(cli(ray_session, ns, "result", "cli-waits", "--timeout", "30").stdout) == {"by": "ops"}
    assert json.loads(cli(ray_session, ns, "event", "cli-waits", "phase").stdout) == "signalled"
