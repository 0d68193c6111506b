"""`Command`: the base of every workflow, and its journal encoding.

A command is journaled as ``{"type": "module:QualName", "fields": {...}}``, never
pickled, so a journal outlives the code that wrote it and can be read by humans.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import unicodedata
from typing import TYPE_CHECKING, Any, ClassVar, cast

import msgpack

from workflows.errors import InvalidCommand
from workflows.policy import COORDINATOR_SCHEDULE, RetryPolicy

if TYPE_CHECKING:
    from workflows.context import Context


class Command:
    """Base class of workflows. Subclass it as a ``@dataclass`` and define `exec`.

    ``deadline_s`` (a class attribute) bounds how long, from submission, the command
    may keep being retried; past it a retry becomes a failure (`DeadlineExceeded`)
    and `compensate` runs as for any other failure. Retries of `compensate` itself
    are not bounded: what was done is undone, however late.

    ``retry`` (a class attribute, a `RetryPolicy`) schedules the retries of attempts
    that raise `Delayed` or `Blocked`, bounds them, and names errors never retried.
    The default, `COORDINATOR_SCHEDULE`, is the coordinator's schedule (its
    ``Options`` intervals) with no attempt limit.
    """

    deadline_s: ClassVar[float | None] = None
    retry: ClassVar[RetryPolicy] = COORDINATOR_SCHEDULE

    async def exec(self, ctx: Context) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__}.exec is not defined")

    async def compensate(self, ctx: Context, error: BaseException) -> None:
        """Undo what ``ctx.outcomes`` says was done. The default does nothing."""

    def __reduce__(self) -> tuple[Any, ...]:
        """A command crosses processes as a `CommandEnvelope`: type name, fields and the
        runtime_env of the sender, so the receiver never needs the command's code."""
        if not dataclasses.is_dataclass(self):
            return cast(tuple[Any, ...], object.__reduce__(self))
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return CommandEnvelope, (type_name(type(self)), fields, current_runtime_env())


@dataclasses.dataclass(frozen=True)
class CommandEnvelope:
    """A command as plain data: ``module:QualName``, its fields, and the runtime_env
    (None outside Ray) of the job that sent it, whose code has the type."""

    type: str
    fields: dict[str, Any]
    runtime_env: dict[str, Any] | None = None


def current_runtime_env() -> dict[str, Any] | None:
    """This Ray driver's or worker's runtime_env (its ``working_dir`` an uploaded
    ``gcs://`` package other actors can use), or None where Ray is not connected."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    env = ray.get_runtime_context().runtime_env
    plain: dict[str, Any] = json.loads(json.dumps(dict(env), default=str))
    return plain


MAX_WORKFLOW_ID_BYTES = 1024
"""The longest workflow id, in bytes of UTF-8."""

COMPENSATE_SUFFIX = "/compensate"


def check_workflow_id(workflow_id: object) -> str:
    """Return ``workflow_id`` if it is a valid workflow id, else raise `InvalidCommand`.

    A workflow id is a non-empty ``str`` of at most `MAX_WORKFLOW_ID_BYTES` bytes of
    UTF-8, with no control, format, surrogate, private-use or unassigned character
    (Unicode category ``C*``), that does not end in ``/compensate``. The idempotency
    keys a workflow sends are ``"{id}/{step}"`` and ``"{id}/compensate/{step}"``; an
    id ``x/compensate`` would send ``x``'s compensation keys, and that suffix is the
    only way two workflows' keys can meet.
    """
    if not isinstance(workflow_id, str) or not workflow_id:
        raise InvalidCommand(f"workflow id must be a non-empty string, got {_short(workflow_id)}")
    try:
        size = len(workflow_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidCommand(f"workflow id {_short(workflow_id)} is not valid UTF-8 (a lone surrogate)") from None
    if size > MAX_WORKFLOW_ID_BYTES:
        raise InvalidCommand(f"workflow id is {size} bytes of UTF-8, over the {MAX_WORKFLOW_ID_BYTES}-byte limit")
    for ch in workflow_id:
        if unicodedata.category(ch).startswith("C"):
            raise InvalidCommand(f"workflow id {_short(workflow_id)} contains the control character {ch!r}")
    if workflow_id.endswith(COMPENSATE_SUFFIX):
        raise InvalidCommand(f"workflow id {_short(workflow_id)} ends in {COMPENSATE_SUFFIX!r}: its step keys "
                             "would be another workflow's compensation keys")
    return workflow_id


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_type(name: str) -> type[Command]:
    """Import ``module:QualName`` and check it names a dataclass `Command`."""
    if not isinstance(name, str) or ":" not in name:
        raise InvalidCommand(f"command type {name!r} is not of the form 'module:QualName'")
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except (ImportError, ValueError, TypeError) as exc:  # ValueError: empty name; TypeError: relative name
        raise InvalidCommand(f"command type {name!r}: module {module_name!r} cannot be imported ({exc})") from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise InvalidCommand(f"command type {name!r}: {qualname!r} not found in {module_name!r}")
    if not (isinstance(obj, type) and issubclass(obj, Command) and dataclasses.is_dataclass(obj)):
        raise InvalidCommand(f"command type {name!r} is not a @dataclass subclass of workflows.Command")
    return obj


def runtime_env_of(cmd: object) -> dict[str, Any] | None:
    """The runtime_env a command was sent from (an envelope's), else None."""
    return cmd.runtime_env if isinstance(cmd, CommandEnvelope) else None


def encode_command(cmd: object, max_bytes: int) -> tuple[str, dict[str, Any]]:
    """Return ``(type, fields)`` for the journal, or raise `InvalidCommand`.

    Checks, before anything is journaled: a dataclass `Command` instance whose type
    imports back to the same class, or a `CommandEnvelope` (whose type is checked where
    it runs), fields msgpack can encode, and the size limit.
    The fields returned are those the journal will hold: packed and unpacked with the
    journal codec's options (a tuple comes back a list), so what runs first, what a
    recovered attempt runs and what a re-submit is compared with are all the same.
    """
    if isinstance(cmd, CommandEnvelope):  # its type is imported where it runs, not here
        name, fields = cmd.type, cmd.fields
        if not isinstance(name, str) or ":" not in name or "<locals>" in name or not isinstance(fields, dict):
            raise InvalidCommand(f"command type {name!r} cannot be imported back by name; define it at module level")
    elif not isinstance(cmd, Command) or not dataclasses.is_dataclass(cmd):
        raise InvalidCommand(f"{cmd!r} is not an instance of a @dataclass subclass of workflows.Command")
    else:
        name = type_name(type(cmd))
        if "<locals>" in name or resolve_type(name) is not type(cmd):
            raise InvalidCommand(f"command type {name!r} cannot be imported back by name; define it at module level")
        # Only __init__ fields: decode rebuilds with cls(**fields), and init=False ones are derived.
        fields = {f.name: getattr(cmd, f.name) for f in dataclasses.fields(cmd) if f.init}
    try:
        packed = msgpack.packb(fields, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidCommand(f"command {name}: a field cannot be encoded with msgpack ({exc})") from None
    if len(packed) > max_bytes:
        raise InvalidCommand(f"command {name}: fields are {len(packed)} bytes, over the {max_bytes}-byte limit")
    normalised: dict[str, Any] = msgpack.unpackb(packed, raw=False, strict_map_key=False)
    return name, normalised


def decode_command(name: str, fields: dict[str, Any]) -> Command:
    """Rebuild a command from its journal form; `InvalidCommand` if the fields don't fit."""
    cls = resolve_type(name)
    if not isinstance(fields, dict):
        raise InvalidCommand(f"command {name}: fields must be a mapping, got {type(fields).__name__}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise InvalidCommand(f"command {name}: fields do not fit the dataclass ({exc})") from None
