"""Intake: how workflows enter the supervisor's table, new, recovered or adopted.

`Intake` is a part of `actors.supervision.supervisor.SupervisorCore`: admission under
MaxCmds, submits, and adoption of workflows the journal keeps. A submit is checked whole before
anything is journaled (command, id, record size: `InvalidCommand`), waits for room
under MaxCmds, and returns only once its ``submitted`` record is durable, for every
caller: a second submit of an id still being admitted waits for the first one's
answer. The journal has the last word on ids: one it still keeps (a finished
workflow this cache has forgotten) is answered from what it holds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from actors import records
from actors.metrics import SUBMITTED, Metrics
from actors.options import Options
from actors.records import Known, Record, Submitted, to_wire
from actors.supervision.admission import Admission
from actors.supervision.dispatcher import Dispatcher
from actors.supervision.modes import Mode
from actors.supervision.parking import Parking
from actors.supervision.ports import JournalPort
from actors.workflow_state import Event, State, Workflow, WorkflowTable, transition
from workflows.command import check_workflow_id, encode_command, runtime_env_of
from workflows.errors import InvalidCommand, Suspended

Encoded = tuple[str, dict[str, Any]]
"""A command's journal form: its type name and msgpack-normalised fields."""


class Intake:
    """Admission, submits and adoption; new workflows go to ``dispatcher``, parked
    recovered ones to ``parking``."""

    def __init__(self, options: Options, journal: JournalPort, table: WorkflowTable, admission: Admission,
                 parking: Parking, dispatcher: Dispatcher, started: asyncio.Event,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        self.options = options
        self.journal = journal
        self.table = table
        self.admission = admission
        self.parking = parking
        self.dispatcher = dispatcher
        self.started = started
        self.clock = clock
        self.metrics = metrics or Metrics.off()
        self.submitting: dict[str, tuple[Encoded, asyncio.Future[None]]] = {}
        """Ids being admitted: their command, and a future that ends as their submit does."""
        self.route: Callable[[list[tuple[str, Any]]], Awaitable[list[str]]] | None = None
        """Where new commands run (`actors.supervision.deployments`): a deployment id per
        (type, submitter's runtime_env); `InvalidCommand` for a type none can import."""

    def recover(self, wf: Workflow, now: float) -> None:
        """Schedule an unfinished workflow the journal holds and this process did not run:
        a parked one at its retry time, any other at once (its attempt was cut off)."""
        if wf.state.parked:
            self.parking.wait(wf.id, wf.next_retry_at or now)
        elif wf.state.timed:  # a durable timer or wait: its due time, from the journal
            self.parking.schedule(wf, now)
        else:
            wf.state = transition(wf.state, Event.LOST)
            self.dispatcher.enqueue(wf.id)

    async def submit(self, cmd: Any, workflow_id: str | None = None) -> str:
        return (await self.submit_many([cmd], [workflow_id]))[0]

    async def submit_many(self, cmds: list[Any], workflow_ids: list[str | None] | None = None,
                          start_at: float | None = None) -> list[str]:
        """Journal new commands as one batch once there is room; return their ids.

        Every command and id is checked first (`InvalidCommand`, nothing journaled). An
        id already known, in the table or to the journal, with the same command is
        answered without a new run; with another command it is `InvalidCommand`. An id
        another call is admitting gets that call's answer once it is known: returned
        ids are journaled ids, for every caller.
        """
        await self.started.wait()
        if workflow_ids is not None and len(workflow_ids) != len(cmds):
            raise InvalidCommand(f"{len(cmds)} commands but {len(workflow_ids)} workflow ids")
        checked = [self._check(cmd, wid) for cmd, wid in zip(cmds, workflow_ids or [None] * len(cmds), strict=True)]
        new: dict[str, Encoded] = {}
        others: list[asyncio.Future[None]] = []
        for wid, encoded in checked:
            known, future = self._known(wid)
            known = known or new.get(wid)
            if known is not None and known != encoded:
                raise InvalidCommand(f"workflow id {wid!r} was already submitted with another command ({known[0]})")
            if known is None:
                new[wid] = encoded
            elif future is not None and future not in others:
                others.append(future)
        if new:
            placed: dict[str, str] = {}
            if self.route is not None:
                envs = {wid: runtime_env_of(cmd) for (wid, _), cmd in zip(checked, cmds, strict=True)}
                placed = dict(zip(new, await self.route([(e[0], envs[w]) for w, e in new.items()]), strict=True))
            await self._admit(new, placed, start_at or 0.0)
        for future in others:
            await asyncio.wait([future])
            if future.cancelled():  # its submitter went away before an answer: submit it here
                return await self.submit_many(cmds, [wid for wid, _ in checked], start_at)
            error = future.exception()
            if error is not None:
                raise error
        return [wid for wid, _ in checked]

    def _start(self, wf: Workflow | None) -> None:
        """A new workflow: ready at once, or (``start_at``) sleeping until its start time."""
        if wf is not None and wf.state is State.SLEEPING:
            self.parking.schedule(wf, self.clock())
        elif wf is not None:
            self.dispatcher.enqueue(wf.id)

    def _check(self, cmd: Any, workflow_id: str | None) -> tuple[str, Encoded]:
        """The id and journal form of one command; `InvalidCommand` for anything the
        journal would refuse or its reader could not read back."""
        encoded = encode_command(cmd, self.options.max_payload_bytes)
        wid = uuid.uuid4().hex if workflow_id is None else check_workflow_id(workflow_id)
        # Fields are bounded by max_payload_bytes, the id by its limit: pack the whole
        # record only when they could add up to more than the journal takes.
        if self.options.max_payload_bytes + 4 * (len(wid) + len(encoded[0])) + 256 > records.MAX_RECORD_BYTES:
            record = to_wire(Submitted(wid, encoded[0], encoded[1], 0.0), 2**63 - 1)
            size = len(msgpack.packb(record, use_bin_type=True))  # as the journal packs it
            if size > records.MAX_RECORD_BYTES:
                raise InvalidCommand(f"workflow {wid[:80]!r}: its record is {size} bytes, over the journal's "
                                     f"{records.MAX_RECORD_BYTES}-byte limit")
        return wid, encoded

    def _known(self, wid: str) -> tuple[Encoded | None, asyncio.Future[None] | None]:
        wf = self.table.workflows.get(wid)
        if wf is not None:
            return (wf.type, wf.fields), None
        pending = self.submitting.get(wid)
        return (pending[0], pending[1]) if pending is not None else (None, None)

    def _check_intake(self) -> None:
        mode = self.parking.mode
        if mode is not Mode.NORMAL:
            reason = "suspended by an operator" if self.parking.held else "a service is out (circuit breaker open)"
            raise Suspended(f"intake is closed: {reason}; mode {mode.value}")

    async def _admit(self, new: dict[str, Encoded], placed: dict[str, str] | None = None,
                     start_at: float = 0.0) -> None:
        self._check_intake()
        loop = asyncio.get_running_loop()
        futures = {w: loop.create_future() for w in new}
        self.submitting.update({w: (new[w], futures[w]) for w in new})
        errors: dict[str, BaseException] = {}
        try:
            await self.admission.acquire(len(new), self.options.admission_timeout_s)
            try:
                self._check_intake()
                now = self.clock()
                batch = [Submitted(w, e[0], e[1], now, (placed or {}).get(w, ""), start_at) for w, e in new.items()]
                answers = await self.journal.append(list[Record](batch))
            except BaseException:
                self.admission.release(len(new))
                raise
            errors = self._take_answers(batch, answers)
        except asyncio.CancelledError:
            for future in futures.values():
                future.cancel()
            raise
        except BaseException as exc:
            errors = dict.fromkeys(new, exc)
            raise
        finally:
            for w, future in futures.items():
                self.submitting.pop(w, None)
                if future.done():
                    continue
                if w in errors:
                    future.set_exception(errors[w])
                    future.exception()  # retrieved: nobody may be waiting on it
                else:
                    future.set_result(None)
        if errors:
            raise next(iter(errors.values()))

    def _take_answers(self, batch: list[Submitted], answers: list[Any]) -> dict[str, BaseException]:
        """Apply journaled submits; for ids the journal knew already (`Known`), compare and adopt.

        Returns the `InvalidCommand` of each id the journal holds with another command.
        """
        conflicts: dict[str, BaseException] = {}
        for r, answer in zip(batch, answers, strict=True):
            wid = r.workflow_id
            if not isinstance(answer, Known):
                self.metrics.count(SUBMITTED, 1, r.type)
                self._start(self.table.apply(r))
                self.dispatcher.fresh.add(wid)
            elif (answer.type, answer.fields) != (r.type, r.fields):
                self.admission.release(1)
                conflicts[wid] = InvalidCommand(
                    f"workflow id {wid!r} was already submitted with another command ({answer.type})")
            elif not self._adopt(r, answer.workflow):
                self.admission.release(1)
        return conflicts

    def _adopt(self, record: Submitted, known: dict[str, Any] | None) -> bool:
        """Take into the table a workflow the journal keeps and this cache does not (it
        forgot it, or a submit that gave up waiting on the journal was journaled after
        all); True if it is unfinished, and so keeps its admission.

        ``known`` is the journal's fold of it, or None while its `submitted` record is
        still in a batch being written: that batch comes before the one that answered,
        so it is durable now, and the record is the same command as ``record``."""
        wid = record.workflow_id
        if wid in self.table.workflows:
            return False  # put there meanwhile
        if known is None:
            self._start(self.table.apply(record))
            return True
        wf = Workflow.from_dict(known)
        wf.outcomes, wf.compensations = [], []  # the journal holds them; attempts read them there
        self.table.put(wf)
        if wf.state.finished:
            return False
        self.recover(wf, self.clock())
        return True
