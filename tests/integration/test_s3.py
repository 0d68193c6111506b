"""The s3:// journal backend against a real S3-compatible server (`rclone serve s3`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import ray

from cluster.journal import Journal, open_backend
from tests.support import Coordinator
from workflows.errors import Fenced
from workflows.testing import Echo, Flaky

KEY, SECRET = "AKIDCOORDINATOR01", "coordinator-test-secret-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    root = tmp_path_factory.mktemp("s3")
    (root / "journal").mkdir()
    port = _free_port()
    proc = subprocess.Popen([rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                             "--auth-key", f"{KEY},{SECRET}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1")
    deadline = time.monotonic() + 20
    while True:
        try:
            boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="journal")
            break
        except Exception:  # not listening yet
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(10)


def uri(endpoint: str, tmp_path: Path, prefix: str | None = None) -> str:
    return f"s3://journal/{prefix or uuid.uuid4().hex}?endpoint={endpoint}&wal={tmp_path / 'wal'}"


def test_segments_are_sealed_to_the_store_and_read_back(s3_endpoint: str, tmp_path: Path) -> None:
    storage = uri(s3_endpoint, tmp_path)
    j = Journal(open_backend(storage), segment_bytes=400, owner="a")
    j.open()

    async def fill() -> None:
        for i in range(40):
            await j.append([{"k": "submitted", "w": f"w{i}", "type": "m:T", "fields": {"i": i}, "t": 0.0}])

    asyncio.run(fill())
    sealed = [r for r in j.backend.segments() if r.sealed]
    assert len(sealed) >= 3
    objects = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="journal")["Contents"]
    assert {o["Key"].rsplit("/", 1)[-1] for o in objects} >= {r.name for r in sealed}
    j.close()
    again = Journal(open_backend(storage), owner="b")
    again.open()
    assert [r["w"] for r in again.read() if r["k"] == "submitted"] == [f"w{i}" for i in range(40)]
    again.close()


def test_second_writer_on_another_host_is_fenced_by_the_lease(s3_endpoint: str, tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex
    first = Journal(open_backend(uri(s3_endpoint, tmp_path / "host-a", prefix)), owner="a")
    first.open()
    other = Journal(open_backend(uri(s3_endpoint, tmp_path / "host-b", prefix)), owner="b")
    with pytest.raises(Fenced, match="held by another coordinator"):
        other.open()
    first.close()


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
