"""`Options`: every setting of a coordinator, built once at the entry point.

Options travel into each actor's constructor; nothing reads the environment later.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

SCHEMES = ("file", "s3", "mem")

MAX_PAYLOAD_BYTES = 16 << 20
"""The upper bound of `Options.max_payload_bytes`, a quarter of the journal codec's
record limit (`actors.records.MAX_RECORD_BYTES`, 64 MiB; a test keeps them so):
a record holds one payload (fields, an outcome, a result) plus its id and kind, and
must stay well under the limit the reader enforces."""

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
GATEWAY_FORM = re.compile(rf"{_DOTTED}:{_DOTTED}")


@dataclass(frozen=True)
class Options:
    """Settings of one coordinator. Units are in the names."""

    max_cmds: int = 100
    """MaxCmds: admitted, unfinished commands (running, parked, recovered) at most."""
    slow_retry_interval_s: float = 0.2
    """Delay before retrying a parked command in normal and `suspended_slow` mode."""
    fast_retry_interval_s: float = 0.0
    """Delay before retrying a parked command in `suspended_fast` mode."""
    jitter_s: float = 0.1
    """Retry delays get U(-jitter_s, +jitter_s), derived from (workflow id, attempt)."""
    admission_timeout_s: float = 30.0
    """How long `submit` waits for room at the MaxCmds limit before `AtCapacity`."""
    storage: str = "coordinator-data"
    """Where the journal lives: a path, ``file:///path``, ``s3://bucket/prefix`` or ``mem://name``."""
    replicas: int = 1
    """Journal replicas (LogActors); a batch is durable once a majority has it."""
    command_actors: int | None = None
    """CommandActors per deployment, spread over the nodes; None: one per alive node
    (re-spread as nodes are lost and join)."""
    slots_per_actor: int = 64
    """Workflows one CommandActor runs at once (interleaving their waits)."""
    namespace: str = "coordinator"
    """Ray namespace of the detached, named actors."""
    runtime_env: Mapping[str, Any] | None = None
    """Ray runtime_env of the actors; None inherits the creating job's."""
    retention_s: float = 7 * 24 * 3600.0
    """How long a finished workflow's status, result and outcomes are kept."""
    fsync: bool = True
    """fsync every journal batch before acknowledging it (off only for benchmarks)."""
    gateway: str | None = "workflows.gateway:HttpGateway"
    """Import path of a factory ``f(options)`` building the service gateway on each node."""
    services: Mapping[str, str] = field(default_factory=dict)
    """Service name to base URL, for the default HTTP gateway."""
    max_payload_bytes: int = 1 << 20
    """Largest encoded command, outcome or result accepted; at most `MAX_PAYLOAD_BYTES`."""
    segment_bytes: int = 64 << 20
    """A journal segment is sealed once it grows past this size."""
    snapshot_records: int = 100_000
    """A snapshot (and compaction) is taken after this many journaled records."""
    seal_idle_s: float = 60.0
    """A journal segment idle this long is sealed into the object store."""
    append_timeout_s: float = 60.0
    """How long a writer waits for the journal leader before `JournalUnavailable`."""
    replica_timeout_s: float = 10.0
    """How long a journal batch waits for a majority of replicas before `JournalUnavailable`."""
    colocated_replicas: bool = False
    """Allow several journal replicas on one node (for tests on a single machine)."""
    log_level: str = "warning"
    """structlog level of the actors: debug, info, warning or error."""
    log_format: str = "auto"
    """Log lines of the actors: ``json``, ``console`` (key=value), or ``auto`` (console on a
    terminal, else JSON; an actor's stderr is a file, so JSON)."""
    console_port: int | None = None
    """Serve the web console on 127.0.0.1 of the head node at this port (None: no console)."""
    console_token: str | None = field(default=None, repr=False)
    """Operator token the console's suspend and resume need; None: a read-only console."""
    deployment_grace_s: float = 300.0
    """How long a deployment with no unfinished workflow (and newest for none of its
    types) is kept before its CommandActors are ended."""
    metrics: bool = True
    """Export the coordinator's metrics (`actors.metrics`) through Ray's per-node metrics endpoint."""
    result_cache_size: int = 10_000
    """Finished workflows the supervisor and the journal hold in memory (the last to
    finish); older ones within ``retention_s`` are read back from the journal's storage."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_cmds, int) or self.max_cmds < 1:
            raise ValueError(f"Options.max_cmds must be an integer >= 1, got {self.max_cmds!r}")
        intervals = ("slow_retry_interval_s", "fast_retry_interval_s", "jitter_s", "admission_timeout_s", "retention_s",
                     "replica_timeout_s", "seal_idle_s", "append_timeout_s")
        for name in intervals:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:  # `not >=` also refuses NaN
                raise ValueError(f"Options.{name} must be a number >= 0, got {value!r}")
        _check_counts(self)
        if not isinstance(self.result_cache_size, int) or self.result_cache_size < 0:
            raise ValueError(f"Options.result_cache_size must be an integer >= 0, got {self.result_cache_size!r}")
        if self.max_payload_bytes > MAX_PAYLOAD_BYTES:
            raise ValueError(f"Options.max_payload_bytes must be at most {MAX_PAYLOAD_BYTES} (a quarter of the "
                             f"journal's record limit), got {self.max_payload_bytes!r}")
        if self.gateway is not None and not (isinstance(self.gateway, str) and GATEWAY_FORM.fullmatch(self.gateway)):
            raise ValueError(f"Options.gateway must be None or 'module:factory' (dotted names), got {self.gateway!r}")
        if not self.namespace:
            raise ValueError("Options.namespace must not be empty")
        _one_of("log_level", self.log_level, ("debug", "info", "warning", "error"))
        _one_of("log_format", self.log_format, ("auto", "json", "console"))
        if self.console_port is not None and not (isinstance(self.console_port, int) and 0 < self.console_port < 65536):
            raise ValueError(f"Options.console_port must be None or a port 1-65535, got {self.console_port!r}")
        if self.console_token is not None and not (isinstance(self.console_token, str) and self.console_token):
            raise ValueError("Options.console_token must be None or a non-empty string")
        object.__setattr__(self, "storage", normalize_storage(self.storage))

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)


def _check_counts(options: Options) -> None:
    names = ("replicas", "slots_per_actor", "max_payload_bytes", "segment_bytes", "snapshot_records")
    for name in names if options.command_actors is None else ("command_actors", *names):
        value = getattr(options, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Options.{name} must be an integer >= 1, got {value!r}")


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Options.{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")


def normalize_storage(storage: str) -> str:
    """Turn a path into a ``file://`` URI; check the scheme of a URI."""
    if not isinstance(storage, str) or not storage:
        raise ValueError(f"Options.storage must be a path or a URI, got {storage!r}")
    if "://" not in storage:
        return "file://" + os.path.abspath(storage)
    parsed = urlparse(storage)
    scheme = parsed.scheme
    if scheme not in SCHEMES:
        raise ValueError(f"Options.storage has unknown scheme {scheme!r}: use a path, file://, s3:// or mem://")
    # file://data/x parses as host "data", path "/x": the journal would land in /x.
    if scheme == "file" and (parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/")):
        raise ValueError(f"Options.storage {storage!r}: a file:// URI needs an absolute path (file:///...)")
    return storage
