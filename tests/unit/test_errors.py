"""Every error in `workflows.errors` survives pickling (Ray pickles what actors raise)."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

import workflows.errors as errors

ERRORS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
          if issubclass(cls, BaseException) and cls.__module__ == errors.__name__]

# Constructor arguments for the classes that take more than a message.
ARGS: dict[str, tuple[Any, ...]] = {
    "CommandFailed": ("wf-1", "builtins.ValueError", "bad card", "Traceback (most recent call last): ..."),
    "JournalCorrupt": ("file:///data/wal/00000000000000000000.log", 4096, "checksum mismatch"),
    "UnknownService": ("flights", ("hotels", "payments")),
    "ServiceError": ("payments", "charge", 500, "bad body"),
    "ServiceRejected": ("payments", "charge", 422, "over the limit"),
}


def test_the_module_has_one_root() -> None:
    assert len(ERRORS) >= 14
    assert all(issubclass(cls, errors.CoordinatorError) for cls in ERRORS)
    assert issubclass(errors.InvalidCommand, ValueError) and issubclass(errors.UnknownWorkflow, KeyError)
    assert issubclass(errors.JournalCorrupt, errors.JournalError) and issubclass(errors.Fenced, errors.JournalError)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_round_trips_through_pickle(cls: type[BaseException]) -> None:
    err = cls(*ARGS.get(cls.__name__, (f"{cls.__name__} happened",)))
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(err, protocol=protocol))
        assert type(back) is cls
        assert back.args == err.args
        assert str(back) == str(err)
        assert vars(back) == vars(err)


@pytest.mark.parametrize("cls", [c for c in ERRORS if c.__name__ not in ARGS], ids=lambda c: c.__name__)
def test_round_trips_without_arguments(cls: type[BaseException]) -> None:
    back = pickle.loads(pickle.dumps(cls()))
    assert type(back) is cls and back.args == ()


def test_command_failed_fields_survive() -> None:
    err = errors.CommandFailed(*ARGS["CommandFailed"])
    back = pickle.loads(pickle.dumps(err))
    assert (back.workflow_id, back.error_type, back.message, back.traceback) == ARGS["CommandFailed"]
    assert str(back) == "workflow wf-1 failed: builtins.ValueError: bad card"
    assert pickle.loads(pickle.dumps(errors.CommandFailed("w", "t", "m"))).traceback == ""


def test_journal_corrupt_fields_survive() -> None:
    back = pickle.loads(pickle.dumps(errors.JournalCorrupt(*ARGS["JournalCorrupt"])))
    assert (back.path, back.offset, back.reason) == ARGS["JournalCorrupt"]
    assert str(back) == "journal corrupt at file:///data/wal/00000000000000000000.log offset 4096: checksum mismatch"


def test_unknown_workflow_reads_as_its_message_not_a_quoted_key() -> None:
    assert str(pickle.loads(pickle.dumps(errors.UnknownWorkflow("no workflow 'x'")))) == "no workflow 'x'"
    assert str(errors.UnknownWorkflow()) == "unknown workflow"


def test_errors_raised_while_running_live_here_too() -> None:
    names = {cls.__name__ for cls in ERRORS}
    assert {"WorkerLost", "PayloadTooLarge", "NonDeterminism", "ServiceRejected", "UnknownService"} <= names
