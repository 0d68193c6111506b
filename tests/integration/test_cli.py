"""The `coordinator` command line against a real coordinator: answers and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Coordinator

pytestmark = pytest.mark.ray


def cli(address: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "cluster.cli", "--address", address, "--namespace", namespace, *args],
                          capture_output=True, text=True, timeout=120, env=env)


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
