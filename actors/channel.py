"""Channels: the hottest calls between the actors on connections of their own.

A Ray call between two processes costs about a millisecond each way on a small machine,
and a workflow's path is a chain of appends in series (its ``submitted`` record, each
step, its end). Over a plain TCP connection to the leader's process the same append
answers in about 0.15 ms plus its group commit. So the leader also serves appends on its
node's address, on a port it picks, to callers that present the token it hands out
through Ray (`LogActor.channel`), and the writers (the supervisor, CommandActors) send
their appends there. The supervisor serves the CommandActors' reports and the
`cluster.client.Client`'s ``submit_many`` and ``wait`` the same way
(`SupervisorActor.channel`), and each CommandActor the supervisor's dispatch batches
(`CommandActor.channel`). Every call a channel carries may arrive twice: a report of an
attempt already reported is ignored, a submit of an id already journaled is answered,
a dispatch batch a runner has is not run again.

Ray stays the path of every other call and the fallback of these. A call whose
connection fails, or is not up yet (it is made in the background), is sent as a Ray
call (appends are idempotent, as a Ray call retried to a restarting leader already is:
a step index or an end held is answered, not journaled twice); the connection is tried
again after `RETRY_S`. A call that gets no answer at all is bounded by the caller's
timeout, as a Ray call is.

Frames: a request is ``<length, request id>`` then its body (appends: the records as
msgpack wire maps; other calls: pickled); an answer is ``<length, request id, status>`` then
the answer (or, status 1, the exception) pickled, as Ray would carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import structlog

from workflows.errors import JournalError

log = structlog.get_logger("channel")

REQUEST = struct.Struct("<II")
ANSWER = struct.Struct("<IIB")
TOKEN_BYTES = 16
MAX_FRAME_BYTES = 1 << 30
"""A request or answer larger than this is refused (the connection is closed)."""
LARGE_BATCH_BYTES = 64 << 20
"""A batch this large goes as a Ray call: one frame must not hold a connection for long."""
CONNECT_TIMEOUT_S = 2.0
RETRY_S = 1.0
"""After a connection ended or could not be made, calls go as Ray calls this long (the
pause doubles with each attempt that fails in a row, up to `RETRY_MAX_S`)."""
RETRY_MAX_S = 60.0
CHECK_S = 1.0
"""While it is calling, or calls wait for answers, a caller asks Ray this often whether its
connection still reaches the actor Ray knows: one Ray restarted elsewhere while the old
process lived on (its node cut off, the connection still open) is left within about this
long, as Ray's own calls leave it once told; a slow one is waited for."""

Serve = Callable[[bytes], Awaitable[Any]]
"""What a server does with a request's body; its answer goes back pickled."""


class ChannelLost(Exception):
    """The channel could not carry this batch: send it as a Ray call."""


def unpack_records(body: bytes) -> list[dict[str, Any]]:
    """An append request's records (wire maps); `ValueError` for anything else."""
    try:
        records = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a batch of journal records: {exc!r}") from None
    if not isinstance(records, list):
        raise ValueError(f"not a batch of journal records: {type(records).__name__}")
    return records


class ChannelServer:
    """The serving actor's end: takes requests from token holders, each as ``serve``
    would take a Ray call (requests of one connection run concurrently)."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.served = 0
        """Requests taken on connections (the rest came as Ray calls)."""
        self.address: tuple[str, int] | None = None

    async def start(self, host: str) -> dict[str, Any]:
        self._server = await asyncio.start_server(self._connection, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = (host, port)
        return self.describe()

    def describe(self) -> dict[str, Any]:
        """Where and how to connect; None-valued until started."""
        host, port = self.address or (None, None)
        return {"host": host, "port": port, "token": self.token, "served": self.served}

    def close(self) -> None:
        """Stop serving and end every connection (its callers send their batches as Ray calls)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            token = await asyncio.wait_for(reader.readexactly(TOKEN_BYTES), CONNECT_TIMEOUT_S)
            if not secrets.compare_digest(token, self.token):
                log.warning("channel_refused", peer=str(writer.get_extra_info("peername")))
                return
            while True:
                size, rid = REQUEST.unpack(await reader.readexactly(REQUEST.size))
                if size > MAX_FRAME_BYTES:
                    log.warning("channel_frame_too_large", size=size)
                    return
                body = await reader.readexactly(size)
                task = asyncio.get_running_loop().create_task(self._answer(writer, rid, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the caller went away: its unanswered appends are its to send again
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, rid: int, body: bytes) -> None:
        status = 0
        try:
            self.served += 1
            payload: Any = await self._serve(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the append's error goes to its caller, as a Ray call's would
            status, payload = 1, exc
        try:
            data = pickle.dumps(payload, protocol=5)
        except Exception as exc:  # an exception that does not pickle: its text
            status, data = 1, pickle.dumps(JournalError(f"{type(payload).__name__}: {exc!r}"))
        if not writer.is_closing():
            writer.write(ANSWER.pack(len(data), rid, status) + data)


class Channel:
    """A caller's end: one connection to the actor whose handle it is given (it answers
    ``channel()`` with where it serves), shared by every call of this process;
    `ChannelLost` when a request must go as a Ray call."""

    def __init__(self, actor: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._actor = actor
        self._clock = clock
        self._where: dict[str, Any] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._failures = 0
        """Connection attempts failed in a row: each pauses the next one longer."""
        self._pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self._next_id = 0
        self._retry_at = 0.0
        self._token = b""
        self._last_call = 0.0
        self._watching: asyncio.Task[None] | None = None
        self.sent = 0
        """Batches this channel carried (the rest went as Ray calls)."""

    async def call(self, body: bytes) -> Any:
        """The served actor's answer to ``body``; its error raised here with its type."""
        if len(body) > LARGE_BATCH_BYTES or not self._connected():
            raise ChannelLost("no connection")
        assert self._writer is not None
        self._last_call = self._clock()
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        rid = self._next_id
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        if self._watching is None:
            self._watching = asyncio.get_running_loop().create_task(self._watch())
        try:
            self._writer.write(REQUEST.pack(len(body), rid) + body)
            status, data = await future
        finally:
            self._pending.pop(rid, None)
        self.sent += 1
        payload = pickle.loads(data)
        if status:
            raise payload
        return payload

    async def _watch(self) -> None:
        """Every `CHECK_S` while this connection is up and in use (calls waiting, or made
        within the period), ask Ray whether it reaches the actor Ray knows (`CHECK_S`)."""
        try:
            while self._token and (self._pending or self._clock() - self._last_call < CHECK_S):
                await asyncio.sleep(CHECK_S)
                await self._verify()
        finally:
            self._watching = None

    async def _verify(self) -> None:
        token = self._token
        try:
            where = await asyncio.wait_for(_await(self._actor.channel.remote()), CONNECT_TIMEOUT_S)
            if (not where or where.get("token") != token) and self._token == token:
                self._drop("the served actor was restarted")
        except Exception as exc:  # the actor is gone or silent: its calls go as Ray calls
            if self._token == token:
                self._drop(repr(exc))

    def close(self) -> None:
        for task in (self._watching, self._connecting):
            if task is not None:
                task.cancel()
        self._drop("closed")

    def _connected(self) -> bool:
        """Whether a connection is up; if not, one is made in the background (past the
        pause after a failure) while calls go as Ray calls: a connection that is slow to
        make, or never made, delays no call."""
        if self._writer is not None and not self._writer.is_closing():
            return True
        if self._connecting is None and self._clock() >= self._retry_at:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        return False

    async def connect(self) -> bool:
        """Make the connection now (past the pause after a failure); whether it is up."""
        if not self._connected() and self._connecting is not None:
            await asyncio.shield(self._connecting)
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> None:
        try:
            await self._open()
        except Exception as exc:  # any failure: Ray calls for a while (longer each time), then a new address
            self._failures += 1
            self._where = None
            self._retry_at = self._clock() + min(RETRY_MAX_S, RETRY_S * 2 ** (self._failures - 1))
            log.debug("channel_unavailable", error=repr(exc), failures=self._failures)
        finally:
            self._connecting = None

    async def _open(self) -> None:
        if self._where is None:
            where: dict[str, Any] | None = await asyncio.wait_for(_await(self._actor.channel.remote()),
                                                                  CONNECT_TIMEOUT_S)
            if not where or where.get("port") is None:
                raise ConnectionError("the actor serves no channel")
            self._where = where
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self._where["host"], self._where["port"]), CONNECT_TIMEOUT_S)
        writer.write(self._where["token"])
        self._token, self._failures = self._where["token"], 0
        self._writer = writer
        self._reading = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size, rid, status = ANSWER.unpack(await reader.readexactly(ANSWER.size))
                if size > MAX_FRAME_BYTES:
                    raise ConnectionError(f"an answer of {size} bytes")
                data = await reader.readexactly(size)
                future = self._pending.get(rid)
                if future is not None and not future.done():
                    future.set_result((status, data))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._drop(repr(exc))

    def _drop(self, why: str) -> None:
        """Fail every unanswered call (each goes again as a Ray call) and forget the
        address: the actor may have restarted elsewhere."""
        if self._writer is not None:
            self._writer.close()
        self._writer, self._where, self._token, self._retry_at = None, None, b"", self._clock() + RETRY_S
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ChannelLost(f"the connection ended: {why}"))


async def _await(ref: Any) -> Any:
    return await ref


async def append(leader: Any, channel: Channel | None, wire: list[dict[str, Any]]) -> list[Any]:
    """Append ``wire`` through ``channel``, or as a Ray call when it cannot carry it."""
    if channel is not None:
        with contextlib.suppress(ChannelLost):
            answers: list[Any] = await channel.call(msgpack.packb(wire, use_bin_type=True))
            return answers
    answers = await leader.append.remote(wire)
    return answers


async def call(actor: Any, channel: Channel | None, method: str, *args: Any) -> Any:
    """``actor.method(*args)`` through ``channel`` (served as ``(method, args)`` pickled),
    or as a Ray call when it cannot carry it: for calls that may be sent twice."""
    if channel is not None:
        with contextlib.suppress(ChannelLost):
            return await channel.call(pickle.dumps((method, args), protocol=5))
    return await getattr(actor, method).remote(*args)
