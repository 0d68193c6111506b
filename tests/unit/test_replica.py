"""Replication without Ray: followers, catch-up, majority, epochs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from actors.journal import codec
from actors.journal.backends import MemoryBackend
from actors.journal.epochs import Epochs
from actors.journal.replica import Replica, Replicator, frame_bounds
from workflows.errors import JournalUnavailable


def frames(first: int, count: int, epoch: int = 1) -> bytes:
    return b"".join(codec.encode({"v": 1, "q": first + i, "k": "started", "w": f"w{first + i}", "attempt": epoch,
                                  "t": 0.0}) for i in range(count))


class LocalFollower:
    """A follower in this process; ``down`` makes it fail like a dead actor."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("replica is down")

    async def accept(self, *args: Any) -> int:
        self._check()
        return self.replica.accept(*args)

    async def read(self, from_seq: int) -> tuple[int, bytes]:
        self._check()
        return self.replica.read(from_seq)

    async def end(self) -> int:
        self._check()
        return self.replica.next_seq


def epoch_frame(q: int, epoch: int) -> bytes:
    return codec.encode({"v": 1, "q": q, "k": "epoch", "epoch": epoch, "owner": "t"})


def make_replica(name: str | None = None, segment_bytes: int = 1 << 20) -> Replica:
    r = Replica(MemoryBackend(name or uuid.uuid4().hex), segment_bytes=segment_bytes, owner="t")
    r.open()
    return r


def seqs(replica: Replica) -> list[int]:
    _first, data = replica.read(0)
    records, _ = codec.scan(data)
    return [r["q"] for r in records]


async def leader_log(log: list[bytes]) -> Any:
    async def read_own(start: int, stop: int) -> bytes:
        whole = b"".join(log)
        bounds = frame_bounds(whole)
        return whole[bounds[start][0]:bounds[stop - 1][1]]

    return read_own


async def test_batches_reach_every_follower_in_order() -> None:
    followers = [LocalFollower(make_replica()) for _ in range(2)]
    rep = Replicator(followers, timeout_s=1)
    log: list[bytes] = []
    read_own = await leader_log(log)
    for first in range(0, 30, 3):
        log.append(frames(first, 3))
        await rep.replicate(first, log[-1], 3, read_own)
    await asyncio.sleep(0)
    for f in followers:
        assert seqs(f.replica) == list(range(30))


async def test_a_dead_follower_catches_up_and_majority_keeps_going() -> None:
    followers = [LocalFollower(make_replica()) for _ in range(2)]
    rep = Replicator(followers, timeout_s=1)
    log: list[bytes] = []
    read_own = await leader_log(log)
    followers[1].down = True
    for first in range(0, 12, 4):
        log.append(frames(first, 4))
        await rep.replicate(first, log[-1], 4, read_own)  # 2 of 3: still a majority
    assert seqs(followers[1].replica) == []
    followers[1].down = False
    log.append(frames(12, 4))
    await rep.replicate(12, log[-1], 4, read_own)
    for _ in range(100):
        if followers[1].replica.next_seq == 16:
            break
        await asyncio.sleep(0.001)
    assert seqs(followers[1].replica) == list(range(16))


async def test_no_majority_is_journal_unavailable() -> None:
    followers = [LocalFollower(make_replica()) for _ in range(2)]
    rep = Replicator(followers, timeout_s=0.2)
    followers[0].down = followers[1].down = True
    with pytest.raises(JournalUnavailable, match="majority of 2"):
        await rep.replicate(0, frames(0, 1), 1, await leader_log([frames(0, 1)]))


async def test_new_epoch_cuts_an_older_unacknowledged_tail() -> None:
    replica = make_replica()
    replica.accept(0, 0, 0, epoch_frame(0, 1) + frames(1, 9), 10)
    assert replica.next_seq == 10
    # A new leader recovered only up to 6 (the records after were never acknowledged).
    replica.accept(1, 0, 6, epoch_frame(6, 2) + frames(7, 1, epoch=2), 2)
    _first, data = replica.read(0)
    records, _ = codec.scan(data)
    assert [r["q"] for r in records] == list(range(8))
    assert records[6]["k"] == "epoch" and records[7]["attempt"] == 2
    assert replica.epoch == 2


async def test_replica_reopens_and_rotates_segments() -> None:
    name = uuid.uuid4().hex
    replica = make_replica(name, segment_bytes=200)
    replica.accept(1, 0, 0, codec.encode({"v": 1, "q": 0, "k": "epoch", "epoch": 1, "owner": "t"}), 1)
    for first in range(1, 41, 4):
        replica.accept(1, 0, first, frames(first, 4), 4)
    replica.close()
    again = make_replica(name)
    assert again.next_seq == 41 and seqs(again) == list(range(41)) and again.epoch == 1
    assert len(MemoryBackend(name).segments()) > 1
    again.accept(1, 0, 41, frames(41, 4), 4, sealed_upto=36)  # segments wholly below 36 are dropped
    assert seqs(again)[0] > 0 and seqs(again)[-1] == 44


async def test_a_restarted_follower_keeps_its_epoch_and_its_log() -> None:
    """The segment holding the epoch record is dropped (the store has it); after a restart
    the follower still knows its records are of epoch 1 and keeps them all."""
    name = uuid.uuid4().hex
    replica = make_replica(name, segment_bytes=200)
    replica.accept(0, 0, 0, epoch_frame(0, 1), 1)
    for first in range(1, 41, 4):
        replica.accept(1, 0, first, frames(first, 4), 4, sealed_upto=30)
    assert seqs(replica)[0] > 0  # the segment with the epoch record is gone
    replica.close()
    again = make_replica(name)
    assert again.epoch == 1
    held = seqs(again)
    assert again.accept(1, 0, 41, frames(41, 4), 4, sealed_upto=30) == 45
    assert seqs(again) == [*held, 41, 42, 43, 44]


async def test_a_follower_down_through_an_epoch_change_drops_its_stale_tail() -> None:
    """Epoch 1 wrote 5..9 to this follower only; epoch 2 began at 5 without them, and
    epoch 3 at 12. The follower takes the leader's records from 5 on, not its own."""
    stale = make_replica()
    stale.accept(0, 0, 0, epoch_frame(0, 1) + frames(1, 9), 10)
    log = [epoch_frame(0, 1) + frames(1, 4), epoch_frame(5, 2) + frames(6, 6, epoch=2), epoch_frame(12, 3)]
    fresh = make_replica()
    rep = Replicator([LocalFollower(stale), LocalFollower(fresh)], timeout_s=1)
    epochs = Epochs()
    epochs.add(1, 0)
    epochs.add(2, 5)
    rep.begin(3, 12, epochs, 0)
    log.append(frames(13, 2, epoch=3))
    await rep.replicate(13, log[-1], 2, await leader_log(log))
    for _ in range(100):
        if stale.next_seq == 15 and fresh.next_seq == 15:
            break
        await asyncio.sleep(0.001)
    leader = codec.scan(b"".join(log))[0]
    assert codec.scan(stale.read(0)[1])[0] == leader == codec.scan(fresh.read(0)[1])[0]
    # A batch it holds already is answered as held only when its records are the leader's.
    again = make_replica()
    again.accept(0, 0, 0, epoch_frame(0, 1) + frames(1, 9), 10)
    assert again.accept(2, 5, 7, frames(7, 2, epoch=2), 2) == 5


async def test_recovery_takes_the_newest_epoch_not_the_longest_tail() -> None:
    """One follower holds epoch 1's unacknowledged records 5..9; the other epoch 2's 5..7
    (acknowledged, the leader lost them). The leader takes epoch 2's."""
    own = epoch_frame(0, 1) + frames(1, 4)
    old, new = make_replica(), make_replica()
    old.accept(0, 0, 0, own + frames(5, 5), 10)
    new.accept(0, 0, 0, own + epoch_frame(5, 2) + frames(6, 2, epoch=2), 8)
    rep = Replicator([LocalFollower(old), LocalFollower(new)], timeout_s=0.2)
    last = codec.scan(own)[0][-1]
    tail, newest = await rep.best_tail(5, last)
    assert [r["q"] for r in tail] == [5, 6, 7] and tail[0]["k"] == "epoch" and newest == 2


async def test_recovery_needs_a_majority() -> None:
    a, b = make_replica(), make_replica()
    a.accept(0, 0, 0, frames(0, 5), 5)
    rep = Replicator([LocalFollower(a), LocalFollower(b)], timeout_s=0.2)
    tail, _newest = await rep.best_tail(3, codec.scan(frames(2, 1))[0][0])
    assert [r["q"] for r in tail] == [3, 4]
    tail, _newest = await rep.best_tail(3, codec.scan(frames(2, 1, epoch=2))[0][0])
    assert tail == []  # it does not hold the leader's last record: its tail is of another history
    rep.followers[0].down = rep.followers[1].down = True  # type: ignore[attr-defined]
    with pytest.raises(JournalUnavailable):
        await rep.best_tail(3, None)
