"""The s3:// journal backend against a real S3-compatible server (`rclone serve s3`)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
import ray
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from actors.journal import Backend, Journal, codec, open_backend
from actors.journal.backends import SegmentRef
from actors.journal.s3 import S3Backend
from actors.records import Submitted
from tests.support import Coordinator
from workflows.errors import Fenced
from workflows.testing import Echo, Flaky

KEY, SECRET = "AKIDCOORDINATOR01", "coordinator-test-secret-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rclone:
    """``rclone serve s3`` over a directory, on a fixed port so it can be stopped and started again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "journal").mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
        self.proc = subprocess.Popen([rclone, "serve", "s3", str(self.root), "--addr", f"127.0.0.1:{self.port}",
                                      "--auth-key", f"{KEY},{SECRET}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
        deadline = time.monotonic() + 20
        while True:
            try:
                boto3.client("s3", endpoint_url=self.endpoint).list_objects_v2(Bucket="journal")
                return
            except Exception:  # not listening yet
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = Rclone(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server.endpoint
    server.stop()


@pytest.fixture
def own_rclone(tmp_path: Path) -> Iterator[Rclone]:
    """A server for this test alone, which the test may stop and start."""
    server = Rclone(tmp_path / "s3")
    server.start()
    yield server
    server.stop()


def uri(endpoint: str, tmp_path: Path, prefix: str | None = None, lease_s: float | None = None) -> str:
    lease = f"&lease_s={lease_s}" if lease_s is not None else ""
    return f"s3://journal/{prefix or uuid.uuid4().hex}?endpoint={endpoint}&wal={tmp_path / 'wal'}{lease}"


def test_segments_are_sealed_to_the_store_and_read_back(s3_endpoint: str, tmp_path: Path) -> None:
    storage = uri(s3_endpoint, tmp_path)
    j = Journal(open_backend(storage), segment_bytes=400, owner="a")
    j.open()

    async def fill() -> None:
        for i in range(40):
            await j.append([_record(i)])

    asyncio.run(fill())
    sealed = [r for r in j.backend.segments() if r.sealed]
    assert len(sealed) >= 3
    objects = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="journal")["Contents"]
    assert {o["Key"].rsplit("/", 1)[-1] for o in objects} >= {r.name for r in sealed}
    j.close()
    again = Journal(open_backend(storage), owner="b")
    again.open()
    assert [r["w"] for r in again.read() if r["k"] == "submitted"] == [f"w{i}" for i in range(40)]
    # An index object per sealed segment; lookups read single records with ranged reads.
    assert again.backend.indexes() == [r.first_seq for r in sealed]
    again.backend.delete_index(sealed[0].first_seq)  # and its directory: a lookup reads the index, rebuilt
    again.backend.delete_blob(f"segment-{sealed[0].first_seq:020d}.ids")
    refs = again.backend.segments()
    assert again.log.indexes.records_of(refs, ["w0", "w39"]) == {
        w: [r for r in again.read() if r.get("w") == w] for w in ("w0", "w39")}
    assert again.log.indexes.rebuilt == 1 and sealed[0].first_seq in again.backend.indexes()
    again.close()


LEASE_S = 1.5


def _record(i: int) -> Submitted:
    return Submitted(f"w{i}", "m:T", {"i": i}, 0.0)


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` until it holds; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def _fenced(attempt: Callable[[], object]) -> bool:
    try:
        attempt()
    except Fenced:
        return True
    return False


def _lease_expiry(endpoint: str, prefix: str) -> float | None:
    """The expiry the store holds; None while the read races the holder's write (rclone)."""
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(response_checksum_validation="when_required"))
    try:
        lock = client.get_object(Bucket="journal", Key=f"{prefix}/LOCK")
        return float(json.loads(lock["Body"].read())["expires"])
    except (ClientError, BotoCoreError, ValueError):
        return None


def _renewed(endpoint: str, backend: S3Backend, timeout_s: float) -> None:
    """Wait until the lease object in the store shows a renewal."""
    before = _lease_expiry(endpoint, backend.prefix)
    assert before is not None

    def later() -> bool:
        expiry = _lease_expiry(endpoint, backend.prefix)
        return expiry is not None and expiry > before

    _until(later, timeout_s, "the lease is renewed")


def _takes(backend: Backend, owner: str) -> bool:
    try:
        backend.lock(owner)
    except Fenced:
        return False
    return True


def test_the_lease_length_comes_from_the_uri() -> None:
    assert S3Backend("s3://journal/p?endpoint=http://127.0.0.1:9&lease_s=2").lease_s == 2.0
    assert S3Backend("s3://journal/p?endpoint=http://127.0.0.1:9").lease_s == 30.0
    with pytest.raises(ValueError, match="lease_s must be positive"):
        S3Backend("s3://journal/p?lease_s=0")


def test_second_writer_on_another_host_is_fenced_by_the_lease(s3_endpoint: str, tmp_path: Path) -> None:
    """The holder keeps the storage for many lease lengths by renewing; once it stops
    (hung), the lease runs out, another coordinator takes over and the old one's
    appends raise `Fenced`."""
    prefix = uuid.uuid4().hex
    first = Journal(S3Backend(uri(s3_endpoint, tmp_path / "host-a", prefix), lease_s=LEASE_S), owner="a",
                    segment_bytes=300)
    first.open()

    async def write(j: Journal, start: int, n: int) -> None:
        for i in range(start, start + n):
            await j.append([_record(i)])

    begin = time.monotonic()
    written = 0
    while time.monotonic() - begin < 4 * LEASE_S:
        other = Journal(open_backend(uri(s3_endpoint, tmp_path / "host-b", prefix)), owner="b")
        with pytest.raises(Fenced, match="held by another coordinator: a"):
            other.open()
        asyncio.run(write(first, written, 2))
        written += 2
        time.sleep(LEASE_S / 4)
    sealed = [r for r in first.backend.segments() if r.sealed]
    assert sealed, "the holder sealed segments meanwhile"
    last_sealed = codec.scan(first.backend.read(sealed[-1]), "last sealed")[0][-1]["q"]

    holder = first.backend
    assert isinstance(holder, S3Backend)
    holder.stop_renewing()
    second = Journal(open_backend(uri(s3_endpoint, tmp_path / "host-b", prefix)), owner="b")
    waited = _until(lambda: not _fenced(second.open), 2 * LEASE_S, "the second coordinator takes over")
    assert waited > LEASE_S / 3, "taken over only once the last renewal's lease ran out"
    with pytest.raises(Fenced, match="expired"):
        asyncio.run(write(first, written, 1))
    # The other host reads what the first sealed into the store (its unsealed tail
    # stays in the first host's local write-ahead directory).
    seen = [r for r in second.read() if r["k"] == "submitted"]
    assert [r["w"] for r in seen] == [f"w{i}" for i in range(len(seen))]
    assert seen[-1]["q"] >= last_sealed - 1
    asyncio.run(write(second, written, 3))
    first.close()
    second.close()


def test_a_start_racing_renewals_is_fenced_every_time(s3_endpoint: str, tmp_path: Path) -> None:
    """Starts that read the lease while the holder rewrites it (rclone replaces objects
    non-atomically) see the holder's lease, never an error and never a free storage."""
    prefix = uuid.uuid4().hex
    a = S3Backend(uri(s3_endpoint, tmp_path / "host-a", prefix), lease_s=1.0)
    b = S3Backend(uri(s3_endpoint, tmp_path / "host-b", prefix), lease_s=1.0)
    a.lock("a")
    begin, attempts = time.monotonic(), 0
    while time.monotonic() - begin < 3.0:
        with pytest.raises(Fenced, match="held by another coordinator: a"):
            b.lock("b")
        attempts += 1
    assert a.renewals >= 5 and attempts > 50
    a.unlock()


def test_a_writer_that_stops_renewing_is_fenced_for_every_write(s3_endpoint: str, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    a = S3Backend(uri(s3_endpoint, tmp_path / "host-a", prefix), lease_s=LEASE_S)
    b = S3Backend(uri(s3_endpoint, tmp_path / "host-b", prefix), lease_s=LEASE_S)
    a.lock("a")
    seg = a.open_active(0)
    seg.append(b"x" * 10)
    seg.sync()
    a.seal(0)
    seg = a.open_active(1)
    a.put_snapshot("00000000000000000000.snap", b"s")
    time.sleep(2 * LEASE_S)  # past the lease: only renewals keep it
    seg.append(b"y")
    seg.flush()
    assert not _takes(b, "b")

    a.stop_renewing()
    _until(lambda: _takes(b, "b"), 2 * LEASE_S, "b takes the storage")
    writes: list[Callable[[], object]] = [
        lambda: seg.append(b"z"), seg.sync, seg.flush, lambda: a.seal(1), lambda: a.truncate(SegmentRef(1, False), 0),
        lambda: a.put_snapshot("00000000000000000001.snap", b"t"), lambda: a.delete(SegmentRef(0, True)),
        lambda: a.delete_snapshot("00000000000000000000.snap")]
    for write in writes:
        with pytest.raises(Fenced, match="expired"):
            write()
    assert b.segments() == [SegmentRef(0, True)]
    assert b.snapshots() == ["00000000000000000000.snap"]
    seg.close()
    a.unlock()
    b.unlock()


def test_a_writer_whose_lease_another_owner_took_is_fenced_naming_it(s3_endpoint: str, tmp_path: Path) -> None:
    """Two starts at the same instant can both pass the lock's read-back: the loser
    finds the winner's lease at its next renewal, or when it seals."""
    prefix = uuid.uuid4().hex
    a = S3Backend(uri(s3_endpoint, tmp_path / "host-a", prefix), lease_s=LEASE_S)
    a.lock("a")
    seg = a.open_active(0)
    seg.append(b"x")
    store = boto3.client("s3", endpoint_url=s3_endpoint)
    lease = json.dumps({"owner": "b", "expires": time.time() + 60}).encode()
    store.put_object(Bucket="journal", Key=f"{prefix}/LOCK", Body=lease)
    with pytest.raises(Fenced, match="taken over by b"):
        a.seal(0)
    with pytest.raises(Fenced, match="taken over by b"):
        seg.append(b"y")
    seg.close()
    a.unlock()
    assert json.loads(store.get_object(Bucket="journal", Key=f"{prefix}/LOCK")["Body"].read())["owner"] == "b"

    c = S3Backend(uri(s3_endpoint, tmp_path / "host-c", uuid.uuid4().hex), lease_s=LEASE_S)
    c.lock("c")
    seg = c.open_active(0)
    store.put_object(Bucket="journal", Key=f"{c.prefix}/LOCK", Body=lease)
    _until(lambda: _fenced(lambda: seg.append(b"x")), LEASE_S, "the next renewal finds b's lease")
    with pytest.raises(Fenced, match="taken over by b"):
        seg.sync()
    seg.close()
    c.unlock()


def test_renewals_ride_out_a_store_outage_shorter_than_the_lease(own_rclone: Rclone, tmp_path: Path) -> None:
    lease_s = 4.0
    a = open_backend(uri(own_rclone.endpoint, tmp_path, lease_s=lease_s))
    assert isinstance(a, S3Backend)
    a.lock("a")
    seg = a.open_active(0)
    _renewed(own_rclone.endpoint, a, lease_s)
    down = time.monotonic()
    own_rclone.stop()
    _until(lambda: a.renewal_failures >= 2, lease_s / 2, "renewals fail while the store is down")
    own_rclone.start()
    assert time.monotonic() - down < lease_s - 1, "the store was down for less than the lease"
    renewed = a.renewals
    _until(lambda: a.renewals > renewed, lease_s / 2, "a renewal succeeds once the store is back")
    # Past the lease the outage began in: the writer still holds the storage.
    _until(lambda: time.monotonic() - down > lease_s + 0.5, 2 * lease_s, "past the lease")
    seg.append(b"x")
    seg.sync()
    a.seal(0)
    assert a.segments() == [SegmentRef(0, True)]
    seg.close()
    a.unlock()


def test_a_store_outage_longer_than_the_lease_fences_the_writer(own_rclone: Rclone, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    a = open_backend(uri(own_rclone.endpoint, tmp_path / "host-a", prefix, LEASE_S))
    assert isinstance(a, S3Backend)
    a.lock("a")
    seg = a.open_active(0)
    _renewed(own_rclone.endpoint, a, LEASE_S)
    down = time.monotonic()
    own_rclone.stop()
    _until(lambda: _fenced(lambda: seg.append(b"x")), 2 * LEASE_S, "the writer is fenced")
    assert time.monotonic() - down > LEASE_S * 2 / 3 - 0.1, "fenced only once the lease ran out"
    assert a.renewal_failures >= 2
    own_rclone.start()
    with pytest.raises(Fenced, match=r"expired.*last error: .*(Connect|connect)"):
        seg.sync()
    with pytest.raises(Fenced, match="expired"):
        a.seal(0)
    b = S3Backend(uri(own_rclone.endpoint, tmp_path / "host-b", prefix), lease_s=LEASE_S)
    # a gives up a little before its lease ends (no renewal could land in time); b
    # takes the storage once it has.
    _until(lambda: _takes(b, "b"), LEASE_S, "b takes the storage")
    seg.close()
    a.unlock()
    b.unlock()


def test_coordinator_on_s3_end_to_end(s3_endpoint: str, ray_session: str, tmp_path: Path) -> None:
    env = {"env_vars": {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}}
    c = Coordinator(uri(s3_endpoint, tmp_path), segment_bytes=2000, runtime_env=env,
                    slow_retry_interval_s=0.3)
    try:
        ids = ray.get(c.sup.submit_many.remote([Echo(i) for i in range(20)]))
        parked = ray.get(c.sup.submit_many.remote([Flaky(failures=2) for _ in range(5)]))
        assert ray.get([c.sup.result.remote(w, 60) for w in ids]) == list(range(20))
        c.restart()
        assert ray.get([c.sup.result.remote(w, 60) for w in ids]) == list(range(20))
        assert all(r["attempts"] >= 3 for r in ray.get([c.sup.result.remote(w, 60) for w in parked]))
    finally:
        c.stop()
