"""The benchmark's sagas and the in-process idempotent services they call.

One saga, three sequential steps, each a call to an idempotent service that
remembers its results by idempotency key. The same service code runs under every
system: inside the CommandActors (built by `make_gateway`, the coordinator's
gateway factory), and in the bare-asyncio and DBOS processes.

Every call that returns is appended to a per-run *key log* (one ``O_APPEND`` write
per call, atomic for short lines), so the driver can count, across processes,
that each step's key was served exactly once.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from actors.options import Options
from workflows.command import Command
from workflows.context import Context

SERVICES = ("inventory", "payment", "shipping")
"""The three services of a saga, called in this order."""

HOLD_STEP = 1
"""The step that waits while a hold marker exists (the `recovery` workload)."""

HOLD_POLL_S = 0.02

KEY_WINDOW = 30_000
"""Keys a service remembers, the oldest forgotten first: as a real service expires its
idempotency keys, so a long run measures the coordinator's memory, not the services'.
A retried step comes within seconds, far inside the window."""


class KeyService:
    """An idempotent service: the first call under a key computes, later ones replay."""

    def __init__(self, name: str, keylog: KeyLog | None) -> None:
        self.name = name
        # Ordered: the oldest key leaves in O(1) (a dict's first key, after many deletions
        # from its front, is found by a scan past the deleted slots: ~16 us a call at 30,000).
        self.results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.calls = 0
        self.executions = 0
        self._keylog = keylog

    def serve(self, key: str) -> dict[str, Any]:
        self.calls += 1
        result = self.results.get(key)
        if result is None:
            self.executions += 1
            result = {"svc": self.name, "key": key, "ok": True}
            self.results[key] = result
            if len(self.results) > KEY_WINDOW:
                self.results.popitem(last=False)
        if self._keylog is not None:
            self._keylog.write(key)
        return result


class KeyLog:
    """Appends one line per served call to a file shared by every process of a run."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, key: str) -> None:
        os.write(self._fd, (key + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


class Services:
    """The three services of one process; ``call`` is what a saga step runs."""

    def __init__(self, keylog_path: str | None = None) -> None:
        self.keylog = KeyLog(keylog_path) if keylog_path else None
        self.by_name = {name: KeyService(name, self.keylog) for name in SERVICES}

    async def call(self, service: str, key: str, io_ms: int, hold: str) -> dict[str, Any]:
        """Serve ``key``: wait ``io_ms`` (service latency), and while ``hold`` exists."""
        if io_ms:
            await asyncio.sleep(io_ms / 1000)
        while hold and os.path.exists(hold):
            await asyncio.sleep(HOLD_POLL_S)
        return self.by_name[service].serve(key)

    def counts(self) -> dict[str, int]:
        return {"calls": sum(s.calls for s in self.by_name.values()),
                "executions": sum(s.executions for s in self.by_name.values())}


def keylog_path_for(storage: str) -> str:
    """The key log of a coordinator run: beside its journal directory."""
    return str(Path(urlparse(storage).path).parent / "keys.log")


def make_gateway(options: Options) -> Services:
    """The coordinator's gateway factory (``Options.gateway="bench.sagas:make_gateway"``)."""
    return Services(keylog_path_for(options.storage))


@dataclass
class Saga3(Command):
    """Three sequential steps; ``io_ms`` of latency per step; step 1 waits on ``hold``."""

    io_ms: int = 0
    hold: str = ""

    async def exec(self, ctx: Context) -> list[dict[str, Any]]:
        services: Services = ctx.gateway
        out = []
        for i, name in enumerate(SERVICES):
            hold = self.hold if i == HOLD_STEP else ""
            out.append(await ctx.step(name, services.call, name, ctx.key(), self.io_ms, hold))
        return out


async def saga3_bare(services: Services, workflow_id: str, io_ms: int) -> list[dict[str, Any]]:
    """The same saga as plain asyncio calls: no journal, no durability."""
    return [await services.call(name, f"{workflow_id}/{i}", io_ms, "") for i, name in enumerate(SERVICES)]


def expected(workflow_id: str) -> list[dict[str, Any]]:
    return [{"svc": name, "key": f"{workflow_id}/{i}", "ok": True} for i, name in enumerate(SERVICES)]


def check(results: dict[str, Any], keylog: str | None) -> dict[str, int]:
    """Correctness counts: wrong results, keys served more than once, keys never served."""
    wrong = sum(1 for wid, res in results.items() if _plain(res) != expected(wid))
    counts: dict[str, int] = {}
    if keylog is not None and os.path.exists(keylog):
        with open(keylog) as f:
            for line in f:
                key = line.rstrip("\n")
                counts[key] = counts.get(key, 0) + 1
    wanted = [f"{wid}/{i}" for wid in results for i in range(len(SERVICES))]
    duplicated = sum(1 for k in wanted if counts.get(k, 0) > 1)
    missing = sum(1 for k in wanted if counts.get(k, 0) == 0) if keylog is not None else 0
    return {"wrong_results": wrong, "duplicated_keys": duplicated, "missing_keys": missing}


def _plain(value: Any) -> Any:
    """Results may come back as tuples or lists after msgpack; compare as lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
