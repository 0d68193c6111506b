"""The command line's arguments: one parser, and the environment read in one place (`settle`)."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlparse

from actors.logs import FORMATS, LEVELS
from actors.options import Options
from actors.workflow_state import State

OUTPUTS = ("table", "json")
DEFAULT_NAMESPACE = "coordinator"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class UsageError(ValueError):
    """The command line does not parse: one line on stderr, exit 1."""


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is raised (exit 1, one line) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def parser() -> Parser:
    p = Parser(prog="coordinator", description="Run and operate a Ray Coordinator. Exit codes: 0 ok, 1 bad input "
               "or no coordinator (usage errors too), 2 a workflow that failed.")
    _common(p)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=Parser)
    _start(sub)
    s = _add(sub, "submit", "submit a command; print its workflow id (or its result with --wait)")
    s.add_argument("type", help="command type, module:QualName (e.g. workflows.examples:BookTrip)")
    s.add_argument("--json", default="{}", dest="fields", help="the command's fields as a JSON object (default: {})")
    s.add_argument("--id", default=None, help="workflow id (default: a new one); the same id again runs nothing twice")
    s.add_argument("--wait", action="store_true", help="wait for the result and print it (exit 2 if it failed)")
    s.add_argument("--start-at", type=float, default=None, metavar="EPOCH_S",
                   help="start no earlier than this time (epoch seconds, UTC); journaled at once, sleeping until then")
    s = _add(sub, "result", "the result of a workflow, waiting for it (exit 2 if it failed)")
    s.add_argument("id", help="workflow id")
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up after this many seconds (default: wait as long as it takes)")
    s = _add(sub, "status", "state, attempts, times, last error and next retry of a workflow")
    s.add_argument("id", help="workflow id")
    _ls(sub)
    _add(sub, "stats", "mode, intake, load and counts by state")
    s = _add(sub, "deploy", "deploy code: a new CommandActor pool whose runtime_env has DIR as working_dir; new "
             "submits of the types it imports go to it")
    s.add_argument("--working-dir", required=True, metavar="DIR", help="directory with the command types' code")
    _add(sub, "deployments", "the deployments: id, runtime_env, types, unfinished workflows, actors, created")
    for name, what in (("cancel", "stop a workflow and compensate it (end state cancelled)"),
                       ("terminate", "stop a workflow without compensating it (end state terminated)")):
        s = _add(sub, name, f"{what}; print whether the request was journaled (false: it had finished)")
        s.add_argument("id", help="workflow id")
        s.add_argument("--reason", default="", help="why, kept in the workflow's error")
    s = _add(sub, "resume-workflow", "run a paused workflow again from its last outcome; print whether it was "
             "paused (false: nothing to do)")
    s.add_argument("id", help="workflow id")
    s = _add(sub, "retry-now", "retry a delayed or blocked workflow at once instead of at its retry time; print "
             "whether it was parked (false: nothing to do)")
    s.add_argument("id", help="workflow id")
    s = _add(sub, "fork", "start a new workflow with ID's command and its first N outcomes copied, run on from "
             "step N; print the new id (the same fork again answers it)")
    s.add_argument("id", help="the workflow to fork")
    s.add_argument("--from-step", type=_not_negative, required=True, metavar="N",
                   help="copy outcomes 0..N-1; the new workflow runs from step N")
    s.add_argument("--new-id", required=True, metavar="NEW", help="the new workflow's id")
    s = _add(sub, "signal", "send a workflow the signal NAME (journaled once per name; ctx.wait_for gets it); "
             "print whether it was journaled (false: sent before, or the workflow finished)")
    s.add_argument("id", help="workflow id")
    s.add_argument("name", help="the signal's name")
    s.add_argument("--json", default="null", dest="payload", help="the payload as JSON (default: null)")
    s = _add(sub, "event", "the last value the workflow's ctx.set_event(KEY, value) journaled, or null")
    s.add_argument("id", help="workflow id")
    s.add_argument("key", help="the event's key")
    _add(sub, "suspend", "close intake (operator override); print the stats")
    _add(sub, "resume", "reopen intake; print the stats")
    _add(sub, "stop", "end the coordinator's actors (the journal stays)")
    s = _add(sub, "outcomes", "journaled outcomes and compensations of a service, to rebuild it")
    s.add_argument("service", help="service name, as the gateway knows it")
    s.add_argument("--since-seq", type=int, default=0, metavar="SEQ",
                   help="from this journal sequence number (default: 0)")
    s.add_argument("--limit", type=int, default=1000, help="at most this many (default: 1000)")
    s = _add(sub, "replay", "rebuild a service that lost its data: send it its journaled outcomes and "
             "compensations, in journal order, with their idempotency keys (POST URL/_replay)")
    s.add_argument("service", help="service name, as the gateway knows it")
    s.add_argument("--to", required=True, metavar="URL", help="the service's base URL, e.g. http://10.0.0.5:8080/hotels")
    s.add_argument("--since-seq", type=_not_negative, default=0, metavar="SEQ",
                   help="from this journal sequence number on, to resume (default: 0)")
    s.add_argument("--batch", type=_positive, default=500, help="entries a request (default: 500)")
    s = _add(sub, "demo", "run the demo sagas on a local Ray and print a summary", output=False)
    s.add_argument("-n", type=int, default=300, help="number of sagas (default: 300)")
    s.add_argument("--storage", default=None, help="journal location (default: a fresh temporary directory)")
    s = _add(sub, "console", "serve the web console of the running coordinator", output=False)
    s.add_argument("--port", type=int, default=8471, help="port to serve on (default: 8471)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    s.add_argument("--token-env", default=None, metavar="VAR",
                   help="environment variable holding the operator token (without it: read-only)")
    s = _add(sub, "journal", "offline journal tools: verify (CRC-check, as start-up does) or dump (JSON lines)")
    s.add_argument("action", choices=["verify", "dump"], help="verify: check every record; dump: print every record")
    s.add_argument("storage", help="journal path or URI")
    return p


def _common(p: argparse.ArgumentParser) -> None:
    """Options every command takes, before or after its name. SUPPRESS keeps a subcommand's
    absent option from overwriting one given before it; `settle` fills the defaults."""
    hide = argparse.SUPPRESS
    p.add_argument("--namespace", default=hide,
                   help=f"Ray namespace of the coordinator (env COORDINATOR_NAMESPACE; default: {DEFAULT_NAMESPACE})")
    p.add_argument("--address", default=hide, metavar="HOST:PORT",
                   help="address of the Ray cluster's GCS (env RAY_ADDRESS; default: the one running here)")
    p.add_argument("--log-level", choices=list(LEVELS), default=hide,
                   help="log lines of this command at this level and above (default: warning)")
    p.add_argument("--log-format", choices=list(FORMATS), default=hide,
                   help="log lines as json or console (key=value); auto (default): console on a terminal, else json")


def _add(sub: Any, name: str, help_text: str, *, output: bool = True) -> argparse.ArgumentParser:
    s: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    _common(s)
    if output:
        s.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS,
                       help="table or json (default: table when stdout is a terminal, json otherwise)")
    return s


def _start(sub: Any) -> None:
    d = Options()
    s = _add(sub, "start", "start a coordinator (and a local Ray head if no Ray cluster runs here); print its stats")
    s.add_argument("--storage", default="coordinator-data",
                   help="journal path or file:// / s3:// URI (default: ./coordinator-data)")
    s.add_argument("--max-cmds", type=int, default=d.max_cmds,
                   help=f"unfinished commands at most (default: {d.max_cmds})")
    s.add_argument("--replicas", type=int, default=d.replicas,
                   help=f"journal replicas, one per node; a majority acknowledges (default: {d.replicas})")
    s.add_argument("--command-actors", type=_positive, default=d.command_actors,
                   help="CommandActors per deployment, spread over the nodes (default: one per alive node)")
    s.add_argument("--slots-per-actor", type=int, default=d.slots_per_actor,
                   help=f"workflows one CommandActor runs at once (default: {d.slots_per_actor})")
    s.add_argument("--gateway-service", action="append", default=[], type=service, metavar="NAME=URL",
                   help="a service of the HTTP gateway, e.g. payments=http://10.0.0.5:8080 (repeatable)")
    s.add_argument("--actor-log-level", choices=list(LEVELS), default=d.log_level,
                   help=f"log level of the coordinator's actors (default: {d.log_level})")
    s.add_argument("--actor-log-format", choices=list(FORMATS), default=d.log_format,
                   help="log lines of the actors (default: auto, which is json: their stderr is a file)")


def _ls(sub: Any) -> None:
    s = _add(sub, "ls", "list workflows: in flight first (the newest submitted first), then finished ones "
             "(the last to end first), read a page at a time however many the journal keeps")
    s.add_argument("--state", choices=[st.value for st in State], default=None, help="only workflows in this state")
    s.add_argument("--type", default=None, dest="type_part", metavar="TEXT",
                   help="only workflows whose type name contains TEXT (case-insensitive)")
    s.add_argument("--since", type=when, default=None, metavar="WHEN",
                   help="submitted at or after WHEN: an ISO 8601 time (UTC unless it says) or an age like 10m, 2h, 1d")
    s.add_argument("--until", type=when, default=None, metavar="WHEN", help="submitted before WHEN (same forms)")
    s.add_argument("--limit", type=_positive, default=100, help="at most this many rows (default: 100)")
    s.add_argument("--offset", type=_not_negative, default=0, help="skip this many rows first, to page (default: 0)")


def settle(args: argparse.Namespace, environ: Mapping[str, str], stdout_is_terminal: bool) -> argparse.Namespace:
    """Fill what the command line left out from the environment, then the defaults."""
    args.namespace = getattr(args, "namespace", None) or environ.get("COORDINATOR_NAMESPACE") or DEFAULT_NAMESPACE
    args.address = getattr(args, "address", None) or environ.get("RAY_ADDRESS") or None
    args.log_level = getattr(args, "log_level", "warning")
    args.log_format = getattr(args, "log_format", "auto")
    args.output = getattr(args, "output", None) or ("table" if stdout_is_terminal else "json")
    return args


def service(text: str) -> tuple[str, str]:
    """``NAME=URL`` of ``--gateway-service``: a name a workflow can write as ``ctx.gateway.NAME``."""
    name, sep, url = text.partition("=")
    try:
        parsed = urlparse(url)
        ok = bool(sep and parsed.scheme in ("http", "https") and parsed.hostname)
    except ValueError:  # a malformed host, e.g. an unclosed [
        ok = False
    if not (ok and name.isidentifier() and not name.startswith("_")):
        raise argparse.ArgumentTypeError(
            f"expected NAME=URL, a service name (a Python identifier) and an http:// or https:// URL, got {text!r}")
    return name, url


def when(text: str, now: float | None = None) -> float:
    """``--since``/``--until``: an ISO 8601 time (naive ones are UTC) or an age (``90s``, ``10m``, ``1h30m``)."""
    now = time.time() if now is None else now
    if _DURATION.sub("", text) == "" and text:
        return now - sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time (2024-05-01T12:00:00Z) or an age (30s, 10m, 2h, 1d), got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _not_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
