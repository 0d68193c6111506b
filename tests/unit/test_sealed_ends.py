"""A long-finished workflow read from the leader's sealed segment files by another
process on its host (`actors.journal.sealed`): the same fold as the journal's own
lookup, and None (ask the leader) whenever the reader cannot be sure."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from actors.journal import Journal, open_backend
from actors.journal.sealed import SealedReader
from actors.records import from_wire

OWNER = "gcs:1/ns/log-0"
SEGMENT_BYTES = 700


async def _settled(j: Journal, root: Path) -> None:
    """Wait until sealing, which runs in the background, is done: no active segment past
    its size, and every sealed one's directory stored."""
    await j.drain()
    for _ in range(300):
        sealed = [r for r in j.backend.segments() if r.sealed]
        full = [f for f in (root / "journal" / "wal").iterdir() if f.stat().st_size > SEGMENT_BYTES]
        if not full and len(list((root / "journal" / "blobs").glob("segment-*.ids"))) == len(sealed):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("sealing did not finish")


async def _finish(j: Journal, w: str, i: int, t: float) -> None:
    """A workflow's run: completed (even ``i``), failed (``i % 4 == 3``) or compensated."""
    error = {"type": "Boom", "message": f"m{i}", "traceback": ""}
    run = [{"k": "submitted", "w": w, "type": "tests:T", "fields": {"i": i}, "t": t},
           {"k": "started", "w": w, "attempt": 1, "t": t},
           {"k": "outcome", "w": w, "step": 0, "service": "svc", "value": i, "t": t, "attempt": 1}]
    if i % 2 == 0:
        run.append({"k": "completed", "w": w, "t": t, "result": {"i": i}})
    elif i % 4 == 3:
        run.append({"k": "failed", "w": w, "t": t, "error": error})
    else:
        run += [{"k": "compensating", "w": w, "error": error, "t": t},
                {"k": "compensation", "w": w, "step": 0, "service": "svc", "value": -i, "t": t, "attempt": 1},
                {"k": "compensated", "w": w, "t": t, "error": error}]
    await j.append([from_wire(r) for r in run])


async def _journal(root: Path, n: int = 40, t: float | None = None) -> tuple[Journal, str]:
    """A file journal (the leader, in this process) with ``n`` finished workflows in small
    segments, the odd ones failed; it stays open, holding the lock."""
    storage = f"file://{root}/journal"
    t = time.time() if t is None else t
    j = Journal(open_backend(storage), owner=OWNER, fsync=False, segment_bytes=SEGMENT_BYTES, cache_size=1)
    j.open()
    for i in range(n):
        await _finish(j, f"w{i}", i, t)
    await _settled(j, root)
    return j, storage


def _active(j: Journal, w: str) -> bool:
    """Whether ``w``'s end lies in the active segment."""
    active = [r.first_seq for r in j.backend.segments() if not r.sealed]
    return bool(active) and j.history(w)[-1]["q"] >= active[0]


def _sealed(j: Journal) -> set[str]:
    """The ids whose every record lies in a sealed segment."""
    return {w for w in j.lookup([f"w{i}" for i in range(40)]) if not _active(j, w)}


async def test_workflows_read_from_sealed_files_equal_the_journals_folds(tmp_path: Path) -> None:
    j, storage = await _journal(tmp_path)
    reader = SealedReader(storage, OWNER, os.getpid(), retention_s=3600.0)
    sealed = _sealed(j)
    assert len(sealed) >= 10
    folds = j.lookup(sorted(sealed))
    assert {folds[w]["state"] for w in sealed} == {"completed", "failed", "compensated"}
    for w in sorted(sealed):
        wf = reader.finished(w)
        assert wf is not None and wf.to_dict() == folds[w], w  # outcomes, seqs, result, error: all of it
    for k in range(3):  # a finished workflow in the active segment: its end is the leader's to give
        tail = f"tail{k}"
        await _finish(j, tail, 0, time.time())
        await _settled(j, tmp_path)
        if _active(j, tail):
            break
        assert reader.finished(tail) is not None  # its segment filled up and was sealed: read here
    assert _active(j, tail) and reader.finished(tail) is None
    assert reader.finished("nobody") is None and not reader.stale
    j.close()


async def test_nothing_is_read_unless_the_lock_names_the_leader_given(tmp_path: Path) -> None:
    j, storage = await _journal(tmp_path)
    w = sorted(_sealed(j))[0]
    assert SealedReader(storage, OWNER, os.getpid(), 3600.0).finished(w) is not None
    other_pid = SealedReader(storage, OWNER, os.getpid() + 1, 3600.0)
    assert other_pid.finished(w) is None and other_pid.stale  # the leader restarted: learn its pid
    other_pid.leader_pid = os.getpid()
    assert other_pid.finished(w) is not None and not other_pid.stale
    assert SealedReader(storage, "gcs:2/ns/log-0", os.getpid(), 3600.0).finished(w) is None  # another cluster's
    j.close()
    os.unlink(f"{tmp_path}/journal/LOCK")
    assert SealedReader(storage, OWNER, os.getpid(), 3600.0).finished(w) is None
    with pytest.raises(ValueError, match="file://"):
        SealedReader("mem://x", OWNER, os.getpid(), 3600.0)


async def test_an_end_near_the_retention_watermark_is_left_to_the_leader(tmp_path: Path) -> None:
    """Retention may have freed the id, and a later run of it lie in the active segment."""
    j, storage = await _journal(tmp_path, t=time.time() - 100.0)
    w = sorted(_sealed(j))[0]
    assert SealedReader(storage, OWNER, os.getpid(), retention_s=200.0).finished(w) is not None
    assert SealedReader(storage, OWNER, os.getpid(), retention_s=100.5).finished(w) is None
    assert SealedReader(storage, OWNER, os.getpid(), retention_s=50.0).finished(w) is None
    j.close()


async def test_a_missing_directory_or_segment_is_left_to_the_leader(tmp_path: Path) -> None:
    j, storage = await _journal(tmp_path)
    reader = SealedReader(storage, OWNER, os.getpid(), 3600.0)
    sealed = sorted(_sealed(j))
    assert all(reader.finished(w) is not None for w in sealed)
    blobs = tmp_path / "journal" / "blobs"
    directories = sorted(blobs.glob("segment-*.ids"))
    directories[-1].unlink()  # the newest sealed segment's: any id may have records there
    assert all(SealedReader(storage, OWNER, os.getpid(), 3600.0).finished(w) is None for w in sealed)
    j.close()
    j = Journal(open_backend(storage), owner=OWNER, fsync=False, segment_bytes=SEGMENT_BYTES, cache_size=1)
    j.open()
    assert j.lookup(sealed).keys() == set(sealed)  # the journal itself still answers, from the index
    segments = sorted((tmp_path / "journal" / "segments").iterdir())
    first = segments[0]
    reader = SealedReader(storage, OWNER, os.getpid(), 3600.0)
    assert all(reader.finished(w) is not None for w in sealed)
    first.unlink()  # compacted away after the directories were read: never an exception
    ends = [reader.finished(w) for w in sealed]
    assert None in ends and any(e is not None and e.state.finished for e in ends)
    j.close()


async def test_a_directory_read_in_place_gives_the_frames_the_decoded_one_gives(tmp_path: Path) -> None:
    from actors.journal.segindex import Directory, DirectoryFile

    j, _ = await _journal(tmp_path)
    files = sorted((tmp_path / "journal" / "blobs").glob("segment-*.ids"))
    assert len(files) >= 8
    for path in files:
        whole, in_place = Directory.decode(path.read_bytes()), DirectoryFile(str(path))
        assert list(in_place.hashes) == list(whole.hashes)
        assert all(in_place.frames(h) == whole.frames(h) for h in whole.hashes)
        assert in_place.frames(12345) == []
    cut = files[0].read_bytes()
    files[0].write_bytes(cut[:-3])
    with pytest.raises(ValueError, match="damaged"):
        DirectoryFile(str(files[0]))
    files[0].write_bytes(cut[:4] + b"DIR1" + cut[8:])
    with pytest.raises(ValueError, match="layout"):
        DirectoryFile(str(files[0]))
    j.close()


async def test_segments_sealed_after_the_listing_are_listed_again_when_a_workflow_is_missed(tmp_path: Path) -> None:
    j, storage = await _journal(tmp_path, n=12)
    reader = SealedReader(storage, OWNER, os.getpid(), 3600.0)
    first = sorted(_sealed(j))[0]
    assert reader.finished(first) is not None  # lists the sealed segments
    listed = len(reader._sealed or [])
    for i in range(12, 40):
        await _finish(j, f"w{i}", i, time.time())
    await _settled(j, tmp_path)
    late = sorted(_sealed(j) - {f"w{i}" for i in range(12)}, key=lambda w: int(w[1:]))
    assert late and all(reader.finished(w) is not None for w in late)
    assert len(reader._sealed or []) > listed and reader.finished(first) is not None
    j.close()
