"""``s3://bucket/prefix``: sealed segments in an S3-compatible object store.

The active segment is a local file (fsynced like ``file://``) under a write-ahead
directory on the LogActor's node; sealing uploads it as
``prefix/segments/<first seq>.seg`` and removes the local copy. Endpoint, region and
credentials come from the standard AWS environment and config files; an
``?endpoint=http://host:port`` in the URI overrides the endpoint, ``?wal=/dir`` the
local directory.

Fencing: a lease object ``prefix/LOCK`` names the owner and is renewed by the
holder; another owner finding an unexpired lease gets `Fenced`. Stores that honour
no conditional writes leave a small race between two starts at the same instant;
the loser sees the winner's lease on its read-back and stops.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.exceptions import ClientError

from cluster.journal.backends import ActiveSegment, Backend, FileBackend, SegmentRef, _parse_names
from workflows.errors import Fenced

LEASE_S = 30.0


class S3Backend(Backend):
    def __init__(self, uri: str, lease_s: float = LEASE_S) -> None:
        parsed = urlparse(uri)
        query = parse_qs(parsed.query)
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if not self.bucket:
            raise ValueError(f"storage {uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        endpoint = query.get("endpoint", [os.environ.get("AWS_ENDPOINT_URL")])[0]
        self.client: Any = boto3.client("s3", endpoint_url=endpoint)
        digest = hashlib.sha1(f"{self.bucket}/{self.prefix}".encode()).hexdigest()[:16]
        wal = query.get("wal", [os.path.join(tempfile.gettempdir(), "coordinator-wal", digest)])[0]
        self.local = FileBackend(wal)
        self.lease_s = lease_s
        self._owner: str | None = None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    # --- fencing ----------------------------------------------------------------------

    def _read_lease(self) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key("LOCK"))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        lease: dict[str, Any] = json.loads(body)
        return lease

    def _write_lease(self, owner: str) -> None:
        body = json.dumps({"owner": owner, "expires": time.time() + self.lease_s}).encode()
        self.client.put_object(Bucket=self.bucket, Key=self._key("LOCK"), Body=body)

    def lock(self, owner: str) -> None:
        self.local.lock(owner)
        lease = self._read_lease()
        if lease is not None and lease["owner"] != owner and lease["expires"] > time.time():
            self.local.unlock()
            raise Fenced(f"storage {self.uri} is held by another coordinator: {lease['owner']}")
        self._write_lease(owner)
        lease = self._read_lease()
        if lease is None or lease["owner"] != owner:
            self.local.unlock()
            raise Fenced(f"storage {self.uri} was taken by another coordinator at the same time")
        self._owner = owner

    def renew(self) -> None:
        """Extend the lease; `Fenced` if another owner took the storage meanwhile."""
        if self._owner is None:
            return
        lease = self._read_lease()
        if lease is not None and lease["owner"] != self._owner:
            raise Fenced(f"storage {self.uri} was taken over by {lease['owner']}")
        self._write_lease(self._owner)

    def unlock(self) -> None:
        if self._owner is not None:
            lease = self._read_lease()
            if lease is not None and lease["owner"] == self._owner:
                self.client.delete_object(Bucket=self.bucket, Key=self._key("LOCK"))
            self._owner = None
        self.local.unlock()

    # --- segments -----------------------------------------------------------------------

    def _sealed(self) -> list[SegmentRef]:
        names: list[str] = []
        pager = self.client.get_paginator("list_objects_v2")
        for page in pager.paginate(Bucket=self.bucket, Prefix=self._key("segments/")):
            names += [obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", [])]
        return _parse_names(names, "seg", True)

    def segments(self) -> list[SegmentRef]:
        sealed = self._sealed()
        seqs = {r.first_seq for r in sealed}
        return sorted(sealed + [r for r in self.local.segments() if not r.sealed and r.first_seq not in seqs])

    def read(self, ref: SegmentRef) -> bytes:
        if not ref.sealed:
            return self.local.read(ref)
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(f"segments/{ref.name}"))["Body"].read()
        return body

    def truncate(self, ref: SegmentRef, size: int) -> None:
        self.local.truncate(ref, size)

    def open_active(self, first_seq: int) -> ActiveSegment:
        return self.local.open_active(first_seq)

    def seal(self, first_seq: int) -> None:
        ref = SegmentRef(first_seq, False)
        data = self.local.read(ref)
        sealed = SegmentRef(first_seq, True)
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"segments/{sealed.name}"), Body=data)
        self.local.delete(ref)

    def delete(self, ref: SegmentRef) -> None:
        if ref.sealed:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(f"segments/{ref.name}"))
        else:
            self.local.delete(ref)

    def put_snapshot(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"snapshots/{name}"), Body=data)

    def get_snapshot(self, name: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(f"snapshots/{name}"))["Body"].read()
        return body

    def snapshots(self) -> list[str]:
        names: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                            Prefix=self._key("snapshots/")):
            names += [obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", [])]
        return sorted(n for n in names if n.endswith(".snap"))

    def delete_snapshot(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"snapshots/{name}"))

    def describe(self, ref: SegmentRef) -> str:
        if ref.sealed:
            return f"s3://{self.bucket}/{self._key('segments/' + ref.name)}"
        return self.local.describe(ref)
