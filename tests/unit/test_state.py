"""The workflow state machine as a value, and the fold that rebuilds workflows from records."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.journal.index import Index
from actors.records import from_wire
from actors.workflow_state import FINISHED, Event, IllegalTransition, State, Workflow, WorkflowTable, transition
from workflows.context import Outcome

S, E = State, Event

# The contract, written out independently of the implementation's table.
EDGES: dict[tuple[State, Event], State] = {
    (S.PENDING, E.DISPATCH): S.RUNNING,
    (S.PENDING, E.LOST): S.PENDING,
    (S.RUNNING, E.DELAY): S.DELAYED,
    (S.RUNNING, E.BLOCK): S.BLOCKED,
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.COMPENSATE): S.COMPENSATED,
    (S.RUNNING, E.LOST): S.PENDING,
    (S.RUNNING, E.EXPIRE): S.PENDING,
    (S.DELAYED, E.RETRY_DUE): S.PENDING,
    (S.DELAYED, E.LOST): S.PENDING,
    (S.DELAYED, E.FAIL): S.FAILED,
    (S.BLOCKED, E.RETRY_DUE): S.PENDING,
    (S.BLOCKED, E.LOST): S.PENDING,
    (S.BLOCKED, E.FAIL): S.FAILED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.PAUSED, E.RESUME): S.PENDING,
    (S.PAUSED, E.LOST): S.PAUSED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.TERMINATE): S.TERMINATED,
    (S.PENDING, E.TERMINATE): S.TERMINATED,
    (S.RUNNING, E.SLEEP): S.SLEEPING,
    (S.RUNNING, E.WAIT): S.WAITING,
    (S.SLEEPING, E.RETRY_DUE): S.PENDING,
    (S.WAITING, E.RETRY_DUE): S.PENDING,
}


@pytest.mark.parametrize(("state", "event"), list(EDGES), ids=lambda v: str(v.value))
def test_every_edge(state: State, event: Event) -> None:
    assert transition(state, event) is EDGES[(state, event)]


ILLEGAL = [pair for pair in itertools.product(State, Event) if pair not in EDGES]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=lambda v: str(v.value))
def test_every_other_pair_is_illegal(state: State, event: Event) -> None:
    with pytest.raises(IllegalTransition, match=f"from {state.value} on {event.value}"):
        transition(state, event)


def test_finished_states_have_no_way_out_and_parked_ones_are_delayed_or_blocked() -> None:
    assert len(ILLEGAL) == len(State) * len(Event) - 25
    assert {S.COMPLETED, S.FAILED, S.COMPENSATED, S.CANCELLED, S.TERMINATED} == FINISHED
    assert [s for s in State if s.finished] == [S.COMPLETED, S.FAILED, S.COMPENSATED, S.CANCELLED, S.TERMINATED]
    assert [s for s in State if s.parked] == [S.DELAYED, S.BLOCKED]
    assert not any(state in FINISHED for state, _ in EDGES)
    assert issubclass(IllegalTransition, ValueError)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_random_event_walks_stay_on_defined_states(events: list[Event]) -> None:
    state = S.PENDING
    for event in events:
        try:
            nxt = transition(state, event)
        except IllegalTransition:
            assert (state, event) not in EDGES
            continue
        assert isinstance(nxt, State) and nxt is EDGES[(state, event)]
        assert not state.finished  # nothing leaves a finished state
        if nxt is S.RUNNING:
            assert state is S.PENDING  # only a dispatch runs a command
        state = nxt


# --- WorkflowTable --------------------------------------------------------------------------

_seq = itertools.count()


def apply_to(table: WorkflowTable, r: dict[str, Any]) -> Workflow | None:
    return table.apply(from_wire(r), r.get("q", -1))


def rec(kind: str, w: str = "w", **fields: Any) -> dict[str, Any]:
    return {"k": kind, "w": w, "q": next(_seq), **fields}


def sub(w: str = "w", t: float = 1.0, **fields: Any) -> dict[str, Any]:
    return rec("submitted", w, type="tests:T", fields=fields or {"x": 1}, t=t)


def out(step: int, value: Any, w: str = "w", kind: str = "outcome") -> dict[str, Any]:
    return rec(kind, w, step=step, service=f"svc{step}", value=value)


def fold(*records: dict[str, Any]) -> WorkflowTable:
    """Fold what the journal keeps of ``records``: its index drops a late writer's
    records (any after the workflow's end) and steps that skip one; the fold takes
    each record it is given as the fact it states."""
    table = WorkflowTable()
    index = Index(table)
    for r in records:
        typed = from_wire(r)
        try:
            keep, _ = index.admit(typed, [])
        except ValueError:  # a step that skips one: refused
            continue
        if keep:
            table.apply(typed, r.get("q", -1))
    return table


def test_submitted_creates_a_pending_workflow() -> None:
    table = WorkflowTable()
    wf = apply_to(table, sub(t=3.5, x=2))
    assert wf is table.workflows["w"]
    assert (wf.id, wf.type, wf.fields, wf.submitted_at) == ("w", "tests:T", {"x": 2}, 3.5)
    assert (wf.state, wf.attempts, wf.outcomes, wf.error, wf.result) == (S.PENDING, 0, [], None, None)
    assert table.unfinished() == [wf]


def test_a_second_submitted_for_the_same_id_keeps_the_first() -> None:
    table = fold(sub(x=1), out(0, "a"), sub(x=2))
    assert table.workflows["w"].fields == {"x": 1} and len(table.workflows["w"].outcomes) == 1


def test_started_keeps_the_highest_attempt() -> None:
    table = fold(sub(), rec("started", attempt=2, t=1), rec("started", attempt=1, t=1))
    assert table.workflows["w"].attempts == 2
    assert table.workflows["w"].state is S.PENDING


def test_outcomes_in_order_with_duplicates_and_gaps_ignored() -> None:
    table = fold(sub(), out(0, "a"), out(0, "dup"), out(2, "gap"), out(1, "b"), out(1, "dup"))
    assert table.workflows["w"].outcomes == [Outcome(0, "svc0", "a"), Outcome(1, "svc1", "b")]
    table = fold(sub(), out(0, "c", kind="compensation"), out(0, "dup", kind="compensation"))
    assert table.workflows["w"].compensations == [Outcome(0, "svc0", "c")]
    assert table.workflows["w"].outcomes == []


@pytest.mark.parametrize(("kind", "state"), [("delayed", S.DELAYED), ("blocked", S.BLOCKED)])
def test_parked(kind: str, state: State) -> None:
    table = fold(sub(), rec("started", attempt=1, t=1), rec(kind, attempt=1, next_retry_at=9.5, t=2))
    wf = table.workflows["w"]
    assert (wf.state, wf.next_retry_at, wf.attempts) == (state, 9.5, 1)
    assert wf.state.parked and table.unfinished() == [wf]
    apply_to(table, rec("delayed", attempt=3, next_retry_at=12.0, t=3))
    assert (wf.state, wf.next_retry_at, wf.attempts) == (S.DELAYED, 12.0, 3)


def test_completed() -> None:
    table = fold(sub(), rec("delayed", attempt=1, next_retry_at=5.0, t=2), rec("completed", result={"ok": 1}, t=7.0))
    wf = table.workflows["w"]
    assert (wf.state, wf.result, wf.finished_at, wf.next_retry_at) == (S.COMPLETED, {"ok": 1}, 7.0, None)
    assert table.unfinished() == []


def test_compensating_then_compensated_keeps_the_error() -> None:
    error = {"type": "builtins.ValueError", "message": "no"}
    table = fold(sub(), out(0, "a"), rec("compensating", error=error, t=2))
    wf = table.workflows["w"]
    assert wf.compensating and wf.error == error and wf.state is S.PENDING
    apply_to(table, out(0, "undo", kind="compensation"))
    apply_to(table, rec("compensated", error=error, t=3.0))
    assert (wf.state, wf.error, wf.finished_at) == (S.COMPENSATED, error, 3.0)
    assert wf.compensations == [Outcome(0, "svc0", "undo")]


def test_failed_carries_its_error() -> None:
    table = fold(sub(), rec("failed", error={"type": "x"}, t=4.0))
    wf = table.workflows["w"]
    assert (wf.state, wf.error, wf.finished_at, wf.result) == (S.FAILED, {"type": "x"}, 4.0, None)


@pytest.mark.parametrize("late", [
    rec("delayed", attempt=2, next_retry_at=50.0, t=9),
    rec("blocked", attempt=2, next_retry_at=50.0, t=9),
    rec("failed", error={"type": "late"}, t=9.0),
    rec("completed", result="late", t=9.0),
    rec("compensated", error={"type": "late"}, t=9.0),
])
def test_the_journal_keeps_nothing_after_a_terminal_state(late: dict[str, Any]) -> None:
    table = fold(sub(), rec("completed", result="first", t=5.0), late)
    wf = table.workflows["w"]
    assert (wf.state, wf.result, wf.finished_at, wf.next_retry_at, wf.error) == (S.COMPLETED, "first", 5.0, None, None)


def test_mode_epoch_and_unknown_workflows() -> None:
    table = fold(rec("epoch", epoch=3), sub("a"), sub("b"), rec("mode", mode="suspended_slow", held=True))
    assert (table.mode, table.held) == ("suspended_slow", True)
    assert apply_to(table, rec("mode", mode="normal")) is None
    assert (table.mode, table.held) == ("normal", False)
    assert list(table.workflows) == ["a", "b"]
    assert apply_to(table, out(0, "x", w="ghost")) is None and "ghost" not in table.workflows
    assert apply_to(table, rec("completed", "ghost", t=1.0)) is None
    last = next(_seq)
    apply_to(table, {"k": "epoch", "q": last, "epoch": 4})
    apply_to(table, {"k": "epoch", "q": 0, "epoch": 4})
    assert table.last_seq == last


def test_status_has_the_documented_fields() -> None:
    table = fold(sub(t=1.5), rec("started", attempt=1, t=2), out(0, "a"), rec("completed", result=1, t=3.0))
    assert table.workflows["w"].status() == {
        "id": "w", "type": "tests:T", "state": "completed", "attempts": 1, "outcomes": [[0, "svc0", "a"]],
        "error": None, "next_retry_at": None, "reason": "", "submitted_at": 1.5, "finished_at": 3.0,
        "wake_at": None, "waiting_for": None,
    }


# Whatever order one writer's records land in, the journal keeps a legal workflow.
fold_records = st.lists(
    st.one_of(
        st.builds(lambda a: rec("started", attempt=a, t=1), st.integers(1, 4)),
        st.builds(lambda s, v: out(s, v), st.integers(0, 3), st.integers()),
        st.builds(lambda k, a, n: rec(k, attempt=a, next_retry_at=n, t=1), st.sampled_from(["delayed", "blocked"]),
                  st.integers(1, 4), st.floats(0, 100)),
        st.builds(lambda k: rec(k, error={"type": k}, result=k, t=2.0),
                  st.sampled_from(["completed", "failed", "compensated"])),
        st.builds(lambda: rec("compensating", error={"type": "e"}, t=1)),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(fold_records)
def test_any_order_of_records_folds_to_a_legal_workflow(records: list[dict[str, Any]]) -> None:
    wf = fold(sub(), *records).workflows["w"]
    ends = [r for r in records if r["k"] in ("completed", "failed", "compensated")]
    parks = [r for r in records if r["k"] in ("delayed", "blocked")]
    first_end = records.index(ends[0]) if ends else len(records)
    if ends:
        assert wf.state is State(ends[0]["k"]) and wf.finished_at == 2.0 and wf.next_retry_at is None
    elif parks:
        assert wf.state is State(parks[-1]["k"]) and wf.next_retry_at == parks[-1]["next_retry_at"]
    else:
        assert wf.state is S.PENDING
    assert [o.step for o in wf.outcomes] == list(range(len(wf.outcomes)))
    firsts: dict[int, Any] = {}
    for r in records[:first_end]:
        if r["k"] == "outcome" and r["step"] == len(firsts):
            firsts[r["step"]] = r["value"]
    assert [o.value for o in wf.outcomes] == list(firsts.values())
    counted = [r["attempt"] for i, r in enumerate(records) if r["k"] == "started" or r in parks if i < first_end]
    assert wf.attempts == max(counted, default=0)  # a record after the end changes nothing


def test_replay_includes_compensations_also_from_a_snapshot_that_kept_no_seqs_for_them() -> None:
    old = {"id": "w", "type": "m:T", "fields": {}, "submitted_at": 0.0, "state": "compensated", "attempts": 1,
           "outcomes": [[0, "flights", "booked"], [1, "hotels", "h"]], "outcome_seqs": [5, 6],
           "compensations": [[0, "hotels", "undo-h"], [1, "flights", "cancelled"]], "compensating": True,
           "error": None, "result": None, "next_retry_at": None, "finished_at": 1.0}
    wf = Workflow.from_dict(old)
    assert wf.compensation_seqs == [6, 6]
    table = WorkflowTable()
    table.workflows["w"] = wf
    assert [(r["kind"], r["value"], r["seq"]) for r in table.outcomes("flights", 0, 10)] == [
        ("outcome", "booked", 5), ("compensation", "cancelled", 6)]
    assert Workflow.from_dict(wf.to_dict()) == wf
    apply_to(table, rec("compensation", step=2, service="flights", value="again"))
    assert [r["value"] for r in table.outcomes("flights", 6, 10)] == ["cancelled", "again"]
