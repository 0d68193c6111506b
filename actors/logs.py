"""structlog, configured in one place for drivers and actors.

Each process calls `configure` once, at its entry point (an actor's constructor, the
CLI's ``main``), with the level and format from `Options` or the command line:

- ``json``: one JSON object per line, for files and log collectors (an actor's stderr
  is a file, so actors write JSON by default);
- ``console``: readable ``key=value`` lines, for a person at a terminal;
- ``auto``: ``console`` when the stream is a terminal, ``json`` otherwise.

Every line carries ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` (a short verb,
``outcome_recorded``), ``component`` (``supervisor``, ``command``, ``log``, ``cli``)
and ``node_id`` (the first 12 hex digits of the Ray node id; null in a process not
connected to Ray), bound once for the process; ``logger`` names the module's logger
(``structlog.get_logger("journal")``) when it has a name. Keys that belong to one unit
of work are bound where that work is known: `bind_workflow` on a logger, `scope` for
everything logged by the current task (contextvars, so concurrent tasks of one actor
keep theirs apart; the runner creates each attempt's task in a `scope` of its
``workflow_id``, ``attempt`` and, on a CommandActor of a deployment, ``deployment``);
`namespace` goes to `configure` with the process.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("auto", "json", "console")
NODE_ID_DIGITS = 12


def configure(level: str = "warning", fmt: str = "auto", *, stream: TextIO | None = None, **bind: str) -> None:
    """Log lines at ``level`` and above to ``stream`` in ``fmt``, every line with ``bind``.

    Without ``stream``, each line goes to ``sys.stderr`` as it is when written.

    ``bind`` holds what is fixed for the process: ``component`` (required in
    practice; ``"unknown"`` without it), ``node_id`` (found from Ray when left out),
    and where they apply ``namespace``, ``deployment``, ``actor``, ``replica``.
    Calling it again replaces the configuration (tests and in-process runs do).
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    json_lines = fmt == "json" or (fmt == "auto" and not _is_terminal(stream or sys.stderr))
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(default=repr) if json_lines
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=24)
    )
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        ProcessFields(bind),
        _add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if json_lines:  # a traceback becomes one string field: one event, one line
        processors += [structlog.processors.format_exc_info, _leading_keys_first]
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=_NamedLoggerFactory(stream),
        cache_logger_on_first_use=False,  # module-level loggers follow a later `configure`
    )
    structlog.contextvars.clear_contextvars()


def bind_workflow(log: Any, workflow_id: str, attempt: int | None = None, **more: Any) -> Any:
    """``log`` bound to one workflow (and attempt, when there is one)."""
    fields: dict[str, Any] = {"workflow_id": workflow_id, **more}
    if attempt is not None:
        fields["attempt"] = attempt
    return log.bind(**fields)


@contextmanager
def scope(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` (``workflow_id``, ``attempt``) to every line the current task logs inside."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield


class ProcessFields:
    """Adds the process's fields; ``node_id`` is looked up from Ray until it is known.

    A driver configures its logs before it connects to Ray, so the node id is
    resolved on the first line logged after the connection, then kept.
    """

    def __init__(self, bind: Mapping[str, str]) -> None:
        self.fields: dict[str, Any] = {"component": "unknown", "node_id": None, **bind}

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self.fields["node_id"] is None:
            self.fields["node_id"] = ray_node_id()
        for key, value in self.fields.items():
            event.setdefault(key, value)
        return event


def ray_node_id() -> str | None:
    """The short Ray node id of this process, or None when it is not connected to Ray."""
    ray = sys.modules.get("ray")  # never imports Ray: a process without it has no node
    if ray is None or not ray.is_initialized():
        return None
    node: str = ray.get_runtime_context().get_node_id()
    return node[:NODE_ID_DIGITS]


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _NamedLogger:
    """Writes each line to ``stream``, or to ``sys.stderr`` as it is when the line is written
    (so a redirected or captured stderr gets the lines, and a closed one is never kept);
    remembers the name given to ``structlog.get_logger(name)``."""

    _lock = threading.Lock()  # one line at a time from the threads of a process

    def __init__(self, stream: TextIO | None = None, name: str | None = None) -> None:
        self.stream = stream
        self.name = name

    def msg(self, message: str) -> None:
        with self._lock:
            print(message, file=self.stream or sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _NamedLoggerFactory:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream

    def __call__(self, *args: Any) -> _NamedLogger:
        return _NamedLogger(self.stream, args[0] if args and isinstance(args[0], str) else None)


_LEADING = ("timestamp", "level", "event", "component", "node_id", "logger")


def _leading_keys_first(logger: Any, method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """A JSON line reads like a console line: when, how bad, what, then who and the details."""
    first = {key: event[key] for key in _LEADING if key in event}
    return {**first, **{k: v for k, v in event.items() if k not in first}}


def _add_logger_name(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    name = getattr(logger, "name", None)
    if name:
        event.setdefault("logger", name)
    return event
