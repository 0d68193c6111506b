"""The replay pager with a fake supervisor, and the demo ledger's restore (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.demo.ledger import ServiceState
from cluster.replay import ReplayFailed, idempotency_key, replay_entries


class FakeSupervisor:
    """``outcomes`` over a fixed journal, recording each page asked for."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.asked: list[tuple[int, int]] = []

    def outcomes(self, service: str, since_seq: int, limit: int) -> list[dict[str, Any]]:
        self.asked.append((since_seq, limit))
        return [e for e in self.entries if e["service"] == service and e["seq"] >= since_seq][:limit]


def journal() -> list[dict[str, Any]]:
    entries = []
    for i in range(7):
        entries.append({"seq": 10 + 2 * i, "kind": "outcome", "workflow_id": f"w{i}", "step": 1, "service": "hotels",
                        "value": {"ref": f"h-{i}"}})
        entries.append({"seq": 11 + 2 * i, "kind": "outcome", "workflow_id": f"w{i}", "step": 0,
                        "service": "flights", "value": {"ref": f"f-{i}"}})
    entries.append({"seq": 30, "kind": "compensation", "workflow_id": "w3", "step": 0, "service": "hotels",
                    "value": {"ref": "cancel-3"}})
    # two entries of one sequence number, split by a page boundary
    entries.append({"seq": 31, "kind": "outcome", "workflow_id": "w8", "step": 0, "service": "hotels", "value": 1})
    entries.append({"seq": 31, "kind": "outcome", "workflow_id": "w8", "step": 1, "service": "hotels", "value": 2})
    return entries


def test_keys_are_the_gateways() -> None:
    assert idempotency_key({"workflow_id": "w", "step": 2, "kind": "outcome"}) == "w/2"
    assert idempotency_key({"workflow_id": "w", "step": 0, "kind": "compensation"}) == "w/compensate/0"


@pytest.mark.parametrize("batch", [1, 2, 3, 9, 500])
def test_pages_send_every_entry_once_in_journal_order(batch: int) -> None:
    sup, sent = FakeSupervisor(journal()), list[dict[str, Any]]()

    def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
        sent.extend(entries)
        return {"applied": len(entries)}

    progress = replay_entries(sup.outcomes, send, "hotels", batch=batch)
    assert [e["key"] for e in sent] == [f"w{i}/1" for i in range(7)] + ["w3/compensate/0", "w8/0", "w8/1"]
    assert [e["seq"] for e in sent] == sorted(e["seq"] for e in sent)
    assert sent[7]["kind"] == "compensation" and sent[7]["value"] == {"ref": "cancel-3"}
    assert progress.sent == progress.acknowledged == progress.applied == 10
    assert progress.last_seq == 31 and sup.asked[0] == (0, batch)
    assert progress.pages == -(-10 // batch)  # every page but the last is full


def test_a_failing_endpoint_names_the_seq_and_resuming_completes() -> None:
    sup, ledger = FakeSupervisor(journal()), ServiceState(["hotels"])
    calls = 0

    def flaky(entries: list[dict[str, Any]]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ReplayFailed("http://x/_replay answered HTTP 503: out")
        status, body = ledger.restore("hotels", entries)
        assert status == 200
        return body

    with pytest.raises(ReplayFailed, match=r"stopped at seq 18 .*--since-seq 18") as failed:
        replay_entries(sup.outcomes, flaky, "hotels", batch=2)  # pages 10,12 | 14,16 | 18,20: fails
    assert failed.value.resume_seq == 18 and len(ledger.ledger("hotels")) == 4
    done = replay_entries(sup.outcomes, flaky, "hotels", since_seq=failed.value.resume_seq, batch=2)
    assert done.since_seq == 18 and done.last_seq == 31 and done.applied == 6 and done.present == 0
    assert ledger.ledger("hotels")["w3/compensate/0"] == {"ref": "cancel-3"} and len(ledger.ledger("hotels")) == 10


def test_restore_stores_answers_without_executing() -> None:
    state = ServiceState(["hotels"])
    status, body = state.answer("hotels", "reserve", ["t1"], "w1/1")
    before = state.ledger("hotels")
    state.set_faults("hotels", forget=True)
    assert state.ledger("hotels") == {}
    entries = [{"key": "w1/1", "value": body["result"]}]
    assert state.restore("hotels", entries) == (200, {"applied": 1, "present": 0})
    assert state.restore("hotels", entries) == (200, {"applied": 0, "present": 1})
    assert state.ledger("hotels") == before
    assert state.answer("hotels", "reserve", ["t1"], "w1/1") == (status, body)  # answered, not executed
    counters = state.stats()["hotels"]
    assert counters["executions"] == 1 and counters["restored"] == 1 and counters["duplicates"] == 0
    assert state.restore("hotels", [{"value": 1}])[0] == 400
    state.set_faults("hotels", outage=True)
    assert state.restore("hotels", entries)[0] == 503
