"""The ``coordinator`` command line.

Errors from bad input (unknown type, fields that do not fit, bad JSON, no
coordinator running) print one line on stderr and exit 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from actors import logs
from actors.options import Options
from workflows.errors import CommandFailed, CoordinatorError

EXIT_ERROR, EXIT_FAILED = 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordinator", description="Run and operate a Ray Coordinator.")
    p.add_argument("--namespace", default=os.environ.get("COORDINATOR_NAMESPACE", "coordinator"),
                   help="Ray namespace of the coordinator (default: coordinator)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: the local one)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a coordinator (and a local Ray head if none runs)")
    s.add_argument("--storage", default="coordinator-data", help="journal path or file:// / s3:// URI")
    s.add_argument("--max-cmds", type=int, default=100)
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--command-actors", type=int, default=2)
    s.add_argument("--slots-per-actor", type=int, default=1)
    s.add_argument("--gateway-service", action="append", default=[], metavar="NAME=URL",
                   help="a service of the HTTP gateway (repeatable)")
    s = sub.add_parser("submit", help="submit a command")
    s.add_argument("type", help="command type, module:QualName")
    s.add_argument("--json", default="{}", dest="fields", help="the command's fields as a JSON object")
    s.add_argument("--id", default=None, help="workflow id (default: a new one)")
    s.add_argument("--wait", action="store_true", help="wait for the result and print it")
    for name in ("result", "status"):
        s = sub.add_parser(name, help=f"{name} of a workflow")
        s.add_argument("id")
        if name == "result":
            s.add_argument("--timeout", type=float, default=None)
    s = sub.add_parser("ls", help="list workflows")
    s.add_argument("--state", default=None)
    s.add_argument("--limit", type=int, default=100)
    for name in ("stats", "suspend", "resume", "stop"):
        sub.add_parser(name, help=f"{name} the coordinator" if name != "stats" else "mode, load and counts")
    s = sub.add_parser("outcomes", help="journaled outcomes of a service, to rebuild it")
    s.add_argument("service")
    s.add_argument("--since-seq", type=int, default=0)
    s.add_argument("--limit", type=int, default=1000)
    s = sub.add_parser("demo", help="run the demo sagas on a local Ray and print a summary")
    s.add_argument("-n", type=int, default=300, help="number of sagas")
    s.add_argument("--storage", default=None, help="journal location (default: a fresh temporary directory)")
    s = sub.add_parser("console", help="serve the web console of the running coordinator")
    s.add_argument("--port", type=int, default=8471)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--token-env", default=None, metavar="VAR",
                   help="environment variable holding the operator token (without it: read-only)")
    s = sub.add_parser("journal", help="offline journal tools")
    s.add_argument("action", choices=["verify", "dump"])
    s.add_argument("storage", help="journal path or URI")
    return p


def _connect_ray(address: str | None, *, start_head: bool = False) -> None:
    import ray

    from workflows.errors import NotRunning

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, namespace="coordinator-cli", log_to_driver=False, configure_logging=False)
        return
    except ConnectionError:
        if not start_head:
            raise NotRunning("no Ray cluster is running here (start one with `coordinator start`)") from None
    subprocess.run(["ray", "start", "--head", "--disable-usage-stats", "--include-dashboard=false"],
                   check=True, stdout=subprocess.DEVNULL)
    ray.init(address="auto", namespace="coordinator-cli", log_to_driver=False, configure_logging=False)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _submit(sup: Any, args: argparse.Namespace) -> Any:
    import ray

    from workflows.command import decode_command
    from workflows.errors import InvalidCommand

    try:
        fields = json.loads(args.fields)
    except json.JSONDecodeError as exc:
        raise InvalidCommand(f"--json is not valid JSON: {exc}") from None
    cmd = decode_command(args.type, fields)
    wid = ray.get(sup.submit.remote(cmd, args.id))
    return ray.get(sup.result.remote(wid)) if args.wait else wid


def _start(args: argparse.Namespace) -> Any:
    import cluster

    services = dict(s.split("=", 1) for s in args.gateway_service)
    options = Options(storage=args.storage, max_cmds=args.max_cmds, replicas=args.replicas,
                      command_actors=args.command_actors, slots_per_actor=args.slots_per_actor,
                      namespace=args.namespace, services=services, runtime_env={"working_dir": os.getcwd()}
                      if os.path.exists("pyproject.toml") else None)
    _connect_ray(args.address, start_head=True)
    import ray

    return ray.get(cluster.start(options).stats.remote())


def _operate(args: argparse.Namespace) -> Any:
    import ray

    import cluster

    if args.cmd == "stop":
        _connect_ray(args.address)
        return {"stopped": cluster.stop(args.namespace)}
    _connect_ray(args.address)
    sup = cluster.connect(args.namespace)
    calls: dict[str, Callable[[], Any]] = {
        "submit": lambda: _submit(sup, args),
        "result": lambda: ray.get(sup.result.remote(args.id, args.timeout)),
        "status": lambda: ray.get(sup.status.remote(args.id)),
        "ls": lambda: ray.get(sup.list.remote(args.state, args.limit)),
        "stats": lambda: ray.get(sup.stats.remote()),
        "suspend": lambda: ray.get(sup.suspend.remote()),
        "resume": lambda: ray.get(sup.resume.remote()),
        "outcomes": lambda: ray.get(sup.outcomes.remote(args.service, args.since_seq, args.limit)),
    }
    return calls[args.cmd]()


def _journal(args: argparse.Namespace) -> int:
    from actors.journal.tools import dump, verify

    if args.action == "verify":
        _print(verify(Options(storage=args.storage).storage))
    else:
        for record in dump(Options(storage=args.storage).storage):
            print(json.dumps(record, default=repr))
    return 0


def _cause(exc: BaseException) -> BaseException:
    """The error an actor raised, without Ray's remote traceback around it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _console(args: argparse.Namespace) -> int:
    import cluster
    from cluster.console.actor import serve

    token = os.environ.get(args.token_env, "") if args.token_env else None
    if token == "":
        raise ValueError(f"--token-env {args.token_env}: that environment variable is not set or empty")
    _connect_ray(args.address)
    cluster.connect(args.namespace)
    serve(args.namespace, args.host, args.port, token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure("warning")
    try:
        if args.cmd == "demo":
            from cluster.demo.run import demo_options, run_demo

            summary = run_demo(demo_options(args.storage) if args.storage else None, n=args.n)
            return 0 if summary.get("ok") else EXIT_FAILED
        if args.cmd == "journal":
            return _journal(args)
        if args.cmd == "console":
            return _console(args)
        _print(_start(args) if args.cmd == "start" else _operate(args))
        return 0
    except CommandFailed as exc:
        print(f"error: {_cause(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (CoordinatorError, ValueError, TimeoutError, OSError) as exc:
        print(f"error: {_cause(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
