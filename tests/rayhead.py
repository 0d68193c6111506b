"""A real `ray start --head` for tests, and jobs submitted to it over the job API.

The head has its own temp dir and its own ports, so it lives beside the test
session's own `ray.init` instance; it is ended by process id (its `ray start --block`
process and every process under it), never by `ray stop`, which would end every Ray
on the host. Nothing here attaches this process to the head: jobs travel over HTTP.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PYTHON = sys.executable
"""The interpreter with the project installed; a job's entrypoint names it by path,
since the entrypoint runs with the head's PATH."""
RAY = str(Path(PYTHON).with_name("ray"))
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
WORKER_PORTS = 200
"""Size of the worker port range: far more workers than a 2-CPU head ever starts."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _worker_range(taken: set[int]) -> tuple[int, int]:
    """A range of free ports below the ephemeral range (so none of ``taken``, which the
    kernel handed out from the ephemeral range, falls in it)."""
    for _ in range(50):
        low = random.randrange(20_000, 30_000 - WORKER_PORTS)
        ports = range(low, low + WORKER_PORTS)
        if not taken.intersection(ports) and all(_port_is_free(p) for p in ports[::10]):
            return low, low + WORKER_PORTS - 1
    raise RuntimeError("no free worker port range between 20000 and 30000")


@dataclass
class JobResult:
    job_id: str
    status: str
    logs: str
    seconds: float

    def last_line(self) -> str:
        lines = [line for line in self.logs.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class RayHead:
    """One `ray start --head --block` process with its own temp dir and ports."""

    num_cpus: int = 2
    temp_dir: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self, timeout_s: float = 90.0) -> RayHead:
        # A short path: Ray's socket paths live under it and must fit in 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")
        names = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
                 "metrics-export-port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
                 "runtime-env-agent-port")
        self.ports = {}
        while len(self.ports) < len(names):
            port = _free_port()
            if port not in self.ports.values():
                self.ports[names[len(self.ports)]] = port
        low, high = _worker_range(set(self.ports.values()))
        args = [RAY, "start", "--head", "--block", f"--temp-dir={self.temp_dir}", f"--num-cpus={self.num_cpus}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
                f"--min-worker-port={low}", f"--max-worker-port={high}", "--disable-usage-stats"]
        args += [f"--{name}={port}" for name, port in self.ports.items()]
        self.log_path = os.path.join(self.temp_dir, "ray-start.log")
        env = {**os.environ, **ENV}
        env.pop("RAY_ADDRESS", None)
        with open(self.log_path, "wb") as log:
            # A session of its own: the head's processes get no signal meant for pytest.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(requests.RequestException):
                answer = requests.get(f"{self.dashboard_url}/api/version", timeout=2)
                if answer.ok:
                    return
            time.sleep(0.25)
        raise TimeoutError(f"the Ray head's job API did not answer within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]
        return ""

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and every process under it (GCS, raylet, dashboard, workers, drivers)."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace_s: float = 10.0) -> None:
        """End this head by process id: SIGTERM to `ray start --block` (it ends what it
        started), then SIGKILL to whatever of its process tree is left."""
        if self.proc is None:
            return
        tree = self.processes()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace_s)
        tree += [p for p in self.processes() if p not in tree]
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(tree, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def submit(self, working_dir: Path | str, script: str, args: list[str] | None = None,
               timeout_s: float = 120.0) -> JobResult:
        """Run ``script`` (in ``working_dir``) as a Ray job with the project's interpreter;
        wait for it to end, within ``timeout_s`` (stopping it if not)."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(self.dashboard_url)
        entrypoint = " ".join([PYTHON, script, *(args or [])])
        started = time.monotonic()
        job_id = client.submit_job(entrypoint=entrypoint,
                                   runtime_env={"working_dir": str(working_dir), "env_vars": ENV})
        deadline = started + timeout_s
        status: Any = client.get_job_status(job_id)
        while not status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.25)
            status = client.get_job_status(job_id)
        if not status.is_terminal():
            with contextlib.suppress(Exception):
                client.stop_job(job_id)
        logs = client.get_job_logs(job_id)
        seconds = time.monotonic() - started
        result = JobResult(job_id, str(status.value if isinstance(status, JobStatus) else status), logs, seconds)
        print(f"job {job_id} ({script}): {result.status} in {seconds:.1f} s")
        return result
