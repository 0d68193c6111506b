"""The ``coordinator`` command line.

Output: ``--output table`` (aligned, for people) or ``--output json`` (for programs);
without it, a table when stdout is a terminal and JSON otherwise. Times are ISO 8601,
UTC, with a ``Z``. ``--namespace``, ``--address``, ``--log-level`` and ``--log-format``
go before or after the command's name; the environment (``COORDINATOR_NAMESPACE``,
``RAY_ADDRESS``) fills what the command line leaves out.

Exit codes: 0 ok; 1 bad input (a usage error too: argparse's own 2 is not used, so 2
always means a workflow failed), no Ray cluster or coordinator, or any other error;
2 a workflow that failed (``result``, ``submit --wait``); 130 interrupted. Every
error is one line on stderr, ``error: ...``, never a traceback (``--log-level
debug`` logs it).

Modules: `args` (the parser and the environment), `ops` (the calls to Ray),
`listing` (``ls``'s filters and pages), `render` (tables and JSON).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import structlog

from actors import logs
from cluster.cli import render
from cluster.cli.args import UsageError, parser, settle
from workflows.errors import CommandFailed

EXIT_OK, EXIT_ERROR, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_OK", "main", "parser"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = settle(parser().parse_args(argv), os.environ, sys.stdout.isatty())
    except UsageError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    logs.configure(args.log_level, args.log_format, component="cli", namespace=args.namespace)
    # Ray's own warnings on connecting (several local clusters, packaging excludes) are not
    # this command's errors: shown from --log-level info on.
    verbose = args.log_level in ("debug", "info")
    logging.getLogger("ray").setLevel(logs.LEVELS[args.log_level] if verbose else logging.ERROR)
    try:
        return _run(args)
    except CommandFailed as exc:
        return _fail(str(_cause(exc)), EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the command line's one catch-all: one line, never a traceback
        structlog.get_logger("cli").debug("command_error", exc_info=True)
        return _fail(_describe(_cause(exc)), EXIT_ERROR)


def _run(args: argparse.Namespace) -> int:
    from cluster.cli import ops

    if args.cmd == "demo":
        from cluster.demo.run import demo_options, run_demo

        summary = run_demo(demo_options(args.storage) if args.storage else None, n=args.n)
        return EXIT_OK if summary.get("ok") else EXIT_FAILED
    if args.cmd == "console":
        ops.console(args)
        return EXIT_OK
    run = {"journal": ops.journal, "start": ops.start}.get(args.cmd, ops.operate)
    answer = run(args)
    if answer is not None:
        print(answer.table() if args.output == "table" else render.as_json(answer.data))
    return EXIT_OK


def _cause(exc: BaseException) -> BaseException:
    """The error an actor raised, without Ray's remote traceback around it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _describe(exc: BaseException) -> str:
    """Our errors and the usual bad-input ones say enough; anything else names its type."""
    from workflows.errors import CoordinatorError

    text = " ".join(str(exc).split("\n", 1)[0].split())
    known = isinstance(exc, CoordinatorError | ValueError | OSError | TimeoutError)
    return text if known and text else f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
