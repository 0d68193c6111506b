"""Commands to their journal form and back: `{"type": "module:QualName", "fields": {...}}`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest

from workflows.command import Command, decode_command, encode_command, resolve_type, type_name
from workflows.context import Context
from workflows.errors import CoordinatorError, InvalidCommand
from workflows.testing import Echo, Fails

LIMIT = 1 << 20


class NotADataclass(Command):
    async def exec(self, ctx: Context) -> Any:
        return None


@dataclass
class NotACommand:
    x: int = 1


@dataclass
class Derived(Command):
    """A command with a field its __init__ does not take (computed from the others)."""

    a: int
    doubled: int = field(init=False)

    def __post_init__(self) -> None:
        self.doubled = 2 * self.a


class Outer:
    @dataclass
    class Nested(Command):
        n: int = 0


@dataclass
class Shadowed(Command):
    pass


ShadowedFirst = Shadowed


@dataclass  # the module name now imports this one, not the class `ShadowedFirst` holds
class Shadowed(Command):  # type: ignore[no-redef]
    pass


def journal_trip(name: str, fields: dict[str, Any]) -> Command:
    """Through msgpack, as the journal stores it."""
    return decode_command(name, msgpack.unpackb(msgpack.packb(fields, use_bin_type=True), raw=False))


def test_round_trip() -> None:
    cmd = Echo({"seat": "1A", "n": [1, 2.5, None, True], "raw": b"\x00\x01"}, steps=3)
    name, fields = encode_command(cmd, LIMIT)
    assert name == "workflows.testing:Echo" == type_name(Echo)
    assert fields == {"value": cmd.value, "steps": 3}
    assert decode_command(name, fields) == cmd
    assert journal_trip(name, fields) == cmd
    assert journal_trip(*encode_command(Fails(steps=1, compensation_fails=True), LIMIT)) == Fails(1, True)


def test_nested_classes_and_init_false_fields_round_trip() -> None:
    name, fields = encode_command(Outer.Nested(4), LIMIT)
    assert name.endswith(":Outer.Nested") and journal_trip(name, fields) == Outer.Nested(4)
    name, fields = encode_command(Derived(3), LIMIT)
    assert fields == {"a": 3}  # the derived field is rebuilt, not journaled
    back = journal_trip(name, fields)
    assert isinstance(back, Derived) and (back.a, back.doubled) == (3, 6)


@pytest.mark.parametrize("cmd", [NotADataclass(), NotACommand(), {"type": "x"}, "Echo", None],
                         ids=["not-a-dataclass", "not-a-command", "dict", "str", "none"])
def test_only_dataclass_commands_are_accepted(cmd: Any) -> None:
    with pytest.raises(InvalidCommand, match=r"is not an instance of a @dataclass subclass of workflows\.Command"):
        encode_command(cmd, LIMIT)


def test_a_class_defined_inside_a_function_is_refused() -> None:
    @dataclass
    class Local(Command):
        x: int = 1

    with pytest.raises(InvalidCommand, match=r"<locals>.Local' cannot be imported back by name; define it at module"):
        encode_command(Local(), LIMIT)


def test_a_class_its_name_no_longer_imports_is_refused() -> None:
    assert encode_command(Shadowed(), LIMIT)[0].endswith(":Shadowed")
    with pytest.raises(InvalidCommand, match="cannot be imported back by name"):
        encode_command(ShadowedFirst(), LIMIT)


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**64, {"k": frozenset()}], ids=["set", "object", "int", "deep"])
def test_a_field_msgpack_cannot_encode_is_refused(value: Any) -> None:
    with pytest.raises(InvalidCommand, match=r"command workflows\.testing:Echo: a field cannot be encoded"):
        encode_command(Echo(value), LIMIT)


def test_an_oversized_command_is_refused() -> None:
    _name, fields = encode_command(Echo("x" * 40), 64)
    assert len(msgpack.packb(fields)) <= 64
    with pytest.raises(InvalidCommand, match=r"fields are \d+ bytes, over the 64-byte limit"):
        encode_command(Echo("x" * 64), 64)


ECHO, DERIVED = type_name(Echo), type_name(Derived)


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        (ECHO, {"value": 1, "nope": 2}, "do not fit the dataclass"),
        (ECHO, {"steps": 2}, "do not fit the dataclass"),  # `value` is required
        (DERIVED, {"a": 1, "doubled": 2}, "do not fit the dataclass"),  # not an __init__ field
        (ECHO, [1, 2], "fields must be a mapping, got list"),
        (ECHO, None, "fields must be a mapping"),
    ],
)
def test_decode_with_fields_that_do_not_fit(name: str, fields: Any, message: str) -> None:
    with pytest.raises(InvalidCommand, match=message):
        decode_command(name, fields)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:Echo", "module 'no_such_module_xyz' cannot be imported"),
        ("workflows.no_such:Echo", "cannot be imported"),
        (":Echo", "module '' cannot be imported"),
        (".testing:Echo", "module '.testing' cannot be imported"),
        ("workflows.testing:Nope", "'Nope' not found in 'workflows.testing'"),
        ("workflows.testing:Echo.nope", "'Echo.nope' not found"),
        ("workflows.testing:", "not found"),
        ("workflows.testing:log_call", "is not a @dataclass subclass of workflows.Command"),
        ("builtins:int", "is not a @dataclass subclass"),
        ("workflows.command:Command", "is not a @dataclass subclass"),
        (f"{__name__}:NotADataclass", "is not a @dataclass subclass"),
        (f"{__name__}:NotACommand", "is not a @dataclass subclass"),
        ("workflows.testing.Echo", "is not of the form 'module:QualName'"),
        (42, "is not of the form"),
    ],
)
def test_decode_of_a_type_that_does_not_resolve(name: Any, message: str) -> None:
    with pytest.raises(InvalidCommand, match=message):
        decode_command(name, {"value": 1})
    with pytest.raises(InvalidCommand):
        resolve_type(name)


def test_invalid_command_is_a_value_error_and_a_coordinator_error() -> None:
    assert issubclass(InvalidCommand, ValueError) and issubclass(InvalidCommand, CoordinatorError)
    assert resolve_type("workflows.testing:Echo") is Echo and dataclasses.is_dataclass(Echo)


# --- workflow ids (SPEC §4.12) -----------------------------------------------------------


def test_workflow_id_rule() -> None:
    from workflows.command import MAX_WORKFLOW_ID_BYTES, check_workflow_id

    assert MAX_WORKFLOW_ID_BYTES == 1024
    for ok in ("t-1", "é" * 512, "x" * 1024, "a/compensate/0", "compensate", "旅/1", "emoji 🚀"):
        assert check_workflow_id(ok) == ok
    bad = {"": "non-empty", None: "non-empty", b"id": "non-empty", "x" * 1025: "1025 bytes",
           "é" * 513: "1026 bytes", "a\x00": "control", "a\x7f": "control", "a\u200b": "control",
           "\ud800": "UTF-8", "a\ue000": "control", "a\U000e0001": "control", "x/compensate": "/compensate",
           "a/b/compensate": "/compensate"}
    for wid, message in bad.items():
        with pytest.raises(InvalidCommand, match=message):
            check_workflow_id(wid)


def test_fields_come_back_as_the_journal_holds_them() -> None:
    from actors.journal import codec

    _name, fields = encode_command(Echo((1, (2, b"\x00"), {"k": (3,)})), LIMIT)
    assert fields == {"value": [1, [2, b"\x00"], {"k": [3]}], "steps": 2}
    record = {"v": codec.VERSION, "q": 0, "k": "submitted", "w": "w", "fields": Echo((1, (2,))).__dict__}
    assert codec.unpack(codec.pack(record), "<test>", 0)["fields"] == encode_command(Echo((1, (2,))), LIMIT)[1]
