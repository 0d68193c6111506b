"""The commands that talk to Ray: connecting (or starting a local head), then one call each."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from actors import logs
from actors.options import Options
from cluster.cli import listing, render
from workflows.errors import NotRunning

RAY_START_TIMEOUT_S = 120.0
REACH_TIMEOUT_S = 5.0
CLI_NAMESPACE = "coordinator-cli"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

log = structlog.get_logger("cli")


@dataclass(frozen=True)
class Answer:
    """What a command printed: ``data`` as JSON, or ``table()`` for a person."""

    data: Any
    table: Callable[[], str]


def connect_ray(address: str | None, *, start_head: bool = False, runtime_env: dict[str, Any] | None = None) -> None:
    """Connect to the Ray cluster at ``address``, or to the one running here.

    Only without an address, and only for ``start``, is a local head started when no
    cluster runs: a given address that does not answer is an error, not a new cluster.
    ``runtime_env`` is this job's, which actors it creates inherit.
    """
    import ray

    kwargs: dict[str, Any] = {"namespace": CLI_NAMESPACE, "log_to_driver": False, "configure_logging": False,
                              "runtime_env": runtime_env}
    if address:
        _reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise NotRunning(f"cannot connect to Ray at {address}: {_first_line(str(exc))}") from None
        return
    try:
        ray.init(address="auto", **kwargs)
        return
    except ConnectionError:
        if not start_head:
            raise NotRunning("no Ray cluster is running here (start one with `coordinator start`, "
                             "or give --address)") from None
    start_local_head()
    ray.init(address="auto", **kwargs)


def _reachable(address: str) -> None:
    """Fail in seconds on a GCS address nothing listens on (Ray itself retries for minutes)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # ray://, "auto", "local": Ray's own checks
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise NotRunning(f"no Ray cluster answers at {address} ({exc.strerror or exc})") from None


def start_local_head() -> None:
    """``ray start --head`` on this machine; a failure is one line naming Ray's own reason."""
    cmd = [ray_executable(), "start", "--head", "--disable-usage-stats", "--include-dashboard=false"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RAY_START_TIMEOUT_S,
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    except FileNotFoundError:
        raise NotRunning("cannot start Ray: the `ray` command is not installed beside this Python or on PATH") from None
    except subprocess.TimeoutExpired:
        raise NotRunning(f"`ray start --head` did not finish within {RAY_START_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        reason = _last_line(done.stderr) or _last_line(done.stdout) or "no output"
        raise NotRunning(f"`ray start --head` failed (exit {done.returncode}): {reason}")


def ray_executable() -> str:
    """The ``ray`` of this Python's environment (the version the CLI imports), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ray") or "ray"


def start(args: argparse.Namespace) -> Answer:
    import ray

    import cluster

    options = Options(storage=args.storage, max_cmds=args.max_cmds, replicas=args.replicas,
                      command_actors=args.command_actors, slots_per_actor=args.slots_per_actor,
                      namespace=args.namespace, services=dict(args.gateway_service),
                      log_level=args.actor_log_level, log_format=args.actor_log_format)
    # Started in a project, its command types go to the actors with this job's working_dir
    # (Ray takes a local directory at the job level only; the actors inherit it).
    project = {"working_dir": os.getcwd()} if os.path.exists("pyproject.toml") else None
    connect_ray(args.address, start_head=True, runtime_env=project)
    stats = ray.get(cluster.start(options).stats.remote())
    summary = {"namespace": options.namespace, "address": ray.get_runtime_context().gcs_address,
               "storage": options.storage, **stats}
    return Answer(summary, lambda: render.stats(summary))


def operate(args: argparse.Namespace) -> Answer:
    import ray

    import cluster

    if args.cmd == "deploy":  # the job's working_dir is uploaded; the deployment gets its gcs:// package
        connect_ray(args.address, runtime_env={"working_dir": os.path.abspath(args.working_dir)})
        dep = cluster.deploy(namespace=args.namespace)
        return Answer(dep, lambda: render.deployments([dep]))
    connect_ray(args.address)
    if args.cmd == "stop":
        stopped = {"stopped": cluster.stop(args.namespace)}
        return Answer(stopped, lambda: render.value(stopped))
    sup = cluster.connect(args.namespace)
    if args.cmd == "submit":
        return _submit(sup, args)
    if args.cmd == "ls":
        return _ls(sup, args)
    if args.cmd == "replay":
        return _replay(sup, args)
    calls: dict[str, tuple[Callable[[], Any], Callable[[Any], str]]] = {
        "result": (lambda: sup.result.remote(args.id, args.timeout), render.value),
        "status": (lambda: sup.status.remote(args.id), render.status),
        "stats": (lambda: sup.stats.remote(), render.stats),
        "deployments": (lambda: sup.deployments.remote(), render.deployments),
        "cancel": (lambda: sup.cancel.remote(args.id, args.reason), render.value),
        "terminate": (lambda: sup.terminate.remote(args.id, args.reason), render.value),
        "resume-workflow": (lambda: sup.resume_workflow.remote(args.id), render.value),
        "fork": (lambda: sup.fork.remote(args.id, args.from_step, args.new_id), render.value),
        "retry-now": (lambda: sup.retry_now.remote(args.id), render.value),
        "signal": (lambda: sup.signal.remote(args.id, args.name, json.loads(args.payload)), render.value),
        "event": (lambda: sup.get_event.remote(args.id, args.key), render.value),
        "suspend": (lambda: sup.suspend.remote(), render.stats),
        "resume": (lambda: sup.resume.remote(), render.stats),
        "outcomes": (lambda: sup.outcomes.remote(args.service, args.since_seq, args.limit), render.outcomes),
    }
    call, show = calls[args.cmd]
    data = ray.get(call())
    return Answer(data, lambda: show(data))


def _submit(sup: Any, args: argparse.Namespace) -> Answer:
    import ray

    from workflows.command import decode_command
    from workflows.errors import InvalidCommand

    try:
        fields = json.loads(args.fields)
    except json.JSONDecodeError as exc:
        raise InvalidCommand(f"--json is not valid JSON: {exc}") from None
    cmd = decode_command(args.type, fields)
    wid = ray.get(sup.submit.remote(cmd, args.id, getattr(args, "start_at", None)))
    logs.bind_workflow(log, wid).debug("workflow_submitted", type=args.type)
    if not args.wait:
        return Answer(wid, lambda: str(wid))
    result = ray.get(sup.result.remote(wid))
    return Answer(result, lambda: render.value(result))


def _ls(sup: Any, args: argparse.Namespace) -> Answer:
    import ray

    def fetch(cursor: str | None, limit: int) -> dict[str, Any]:
        found: dict[str, Any] = ray.get(sup.page.remote(args.state, args.type_part, cursor, limit))
        return found

    query = listing.Query(args.type_part, args.since, args.until, args.limit, args.offset)
    page, total = listing.collect(fetch, query)
    return Answer(page, lambda: render.workflows(page, total, args.offset))


def _replay(sup: Any, args: argparse.Namespace) -> Answer:
    """Progress on stderr (a line a page), the summary as the answer; a failure names where to resume."""
    from cluster.replay import Progress, replay

    def page(p: Progress) -> None:
        print(f"replay {p.service}: {p.acknowledged} acknowledged, up to seq {p.last_seq}", file=sys.stderr,
              flush=True)

    done = replay(sup, args.service, args.to, args.since_seq, args.batch, on_page=page).as_dict()
    done["next_seq"] = None if done["last_seq"] is None else done["last_seq"] + 1
    return Answer(done, lambda: render.pairs([(k, str(v)) for k, v in done.items()]))


def journal(args: argparse.Namespace) -> Answer | None:
    """``verify`` answers a report; ``dump`` prints JSON lines as it reads (None: nothing left to print)."""
    from actors.journal.tools import dump, verify

    storage = Options(storage=args.storage).storage
    if args.action == "verify":
        report = verify(storage)
        return Answer(report, lambda: render.journal(report))
    for record in dump(storage):
        print(json.dumps(record, default=repr))
    return None


def console(args: argparse.Namespace) -> None:
    import cluster
    from cluster.console.actor import serve

    token = os.environ.get(args.token_env, "") if args.token_env else None
    if token == "":
        raise ValueError(f"--token-env {args.token_env}: that environment variable is not set or empty")
    connect_ray(args.address)
    cluster.connect(args.namespace)
    serve(args.namespace, args.host, args.port, token)


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
