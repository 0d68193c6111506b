"""``s3://bucket/prefix``: sealed segments in an S3-compatible object store.

The active segment is a local file (fsynced like ``file://``) under a write-ahead
directory on the LogActor's node; sealing uploads it as
``prefix/segments/<first seq>.seg`` and removes the local copy. Endpoint, region and
credentials come from the standard AWS environment and config files. Query
parameters: ``?endpoint=http://host:port`` overrides the endpoint, ``?wal=/dir`` the
local directory, ``?lease_s=30`` the length of the writer's lease in seconds (tests
shorten it to run past it quickly).

Fencing, by a lease object ``prefix/LOCK`` holding ``{"owner", "expires"}`` (expiry
in wall-clock seconds):

1. `lock` reads the lease; an unexpired lease of another owner is `Fenced`. Otherwise
   it writes its own and reads it back: stores such as ``rclone serve s3`` honour no
   conditional puts, so the read-back is the check, and another owner's lease found
   there means a start at the same instant won.
2. From then until `unlock` a daemon thread renews the lease every ``lease_s / 3``:
   read it, stop if another owner holds it, write a fresh expiry, read it back. A
   renewal that fails (store unreachable, timeout, error) is retried with backoff
   while the lease is still valid. Lease requests time out after a tenth of the
   lease each, and no write is sent that might land after the lease ran out, so a
   late renewal never revives an expired lease.
3. The lease is *lost* when a renewal finds another owner, or when none succeeded in
   time: the renewal thread gives up a fifth of the lease before the end (a write
   sent later might land after it), and every write checks the end itself (on this
   process's monotonic clock, from the moment the last successful lease write was
   sent, so never later than the expiry the store holds). From
   then on every write raises `Fenced` naming the new owner or the reason: the active
   segment's `append`, `sync` and `flush`, and `truncate`, `seal`, `put_snapshot`,
   `delete`, `delete_snapshot`. A process frozen past its lease (so its renewals
   stopped) finds it expired at its first write after waking.
4. `seal`, `put_snapshot` and the deletes of stored objects re-read the lease before
   they touch the store: it must name this owner and be unexpired.

What remains: two starts at the same instant that both pass their read-back (the
loser finds the winner's lease at its next renewal or seal, within ``lease_s / 3``);
a lease write that timed out here but reaches the store later; and hosts' wall
clocks, which must agree to well within the lease.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.config import Config

from actors.journal.backends import ActiveSegment, Backend, GuardedSegment, SegmentRef, check_blob_name, parse_names
from actors.journal.files import FileBackend
from actors.journal.s3lease import S3Lease

LEASE_S = 30.0
# Share of the lease each lease request may spend connecting, and again reading.
REQUEST_SHARE = 0.1


class S3Backend(Backend):
    """Active segments on local disk, sealed ones and snapshots in S3, fenced by a lease.

    ``lease_s`` given here wins over ``?lease_s=`` in the URI, which wins over `LEASE_S`.
    ``renewals`` and ``renewal_failures`` count the renewal thread's attempts (`S3Lease`).
    """

    def __init__(self, uri: str, lease_s: float | None = None) -> None:
        parsed = urlparse(uri)
        query = parse_qs(parsed.query)
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if not self.bucket:
            raise ValueError(f"storage {uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        if lease_s is None:
            lease_s = float(query["lease_s"][0]) if "lease_s" in query else LEASE_S
        if not lease_s > 0:
            raise ValueError(f"storage {uri!r}: lease_s must be positive, not {lease_s}")
        self.lease_s = lease_s
        endpoint = query.get("endpoint", [os.environ.get("AWS_ENDPOINT_URL")])[0]
        self.client: Any = boto3.client("s3", endpoint_url=endpoint)
        # Lease requests must finish well inside the lease: short timeouts and no
        # retries inside botocore (the renewal loop retries, knowing the deadline).
        # Responses are checked by status, not checksum: botocore cannot parse an error
        # response wrapped for checksum validation (rclone answers a GET racing a PUT
        # of the same key with a 500).
        self._request_s = lease_s * REQUEST_SHARE
        self._lease_client: Any = boto3.client("s3", endpoint_url=endpoint, config=Config(
            connect_timeout=self._request_s, read_timeout=self._request_s, retries={"total_max_attempts": 1},
            response_checksum_validation="when_required"))
        # A ranged GET carries no checksum of its own bytes (the stored one is the whole object's).
        self._range_client: Any = boto3.client("s3", endpoint_url=endpoint,
                                               config=Config(response_checksum_validation="when_required"))
        digest = hashlib.sha1(f"{self.bucket}/{self.prefix}".encode()).hexdigest()[:16]
        wal = query.get("wal", [os.path.join(tempfile.gettempdir(), "coordinator-wal", digest)])[0]
        self.local = FileBackend(wal)
        self.lease = S3Lease(self.client, self._lease_client, self.bucket, self._key("LOCK"), uri, lease_s,
                             self._request_s)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    # --- the lease ------------------------------------------------------------------------

    # --- the lease ------------------------------------------------------------------------

    @property
    def renewals(self) -> int:
        return self.lease.renewals

    @property
    def renewal_failures(self) -> int:
        return self.lease.renewal_failures

    def lock(self, owner: str) -> None:
        """Take the storage for ``owner`` (see the module docstring) and start renewing."""
        self.local.lock(owner)
        try:
            self.lease.acquire(owner)
        except BaseException:
            self.local.unlock()
            raise

    def renew(self) -> None:
        """Extend the lease now; `Fenced` if it is lost."""
        self.lease.renew()

    def stop_renewing(self) -> None:
        """Stop renewing and keep the lease until it runs out, as a process that hangs
        would; then `Fenced` at the next write. A fault-injection point."""
        self.lease.stop_renewing()

    def unlock(self) -> None:
        try:
            self.lease.release()
        finally:
            self.local.unlock()

    # --- segments -----------------------------------------------------------------------

    def _sealed(self) -> list[SegmentRef]:
        names: list[str] = []
        pager = self.client.get_paginator("list_objects_v2")
        for page in pager.paginate(Bucket=self.bucket, Prefix=self._key("segments/")):
            names += [obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", [])]
        return parse_names(names, "seg", True)

    def segments(self) -> list[SegmentRef]:
        sealed = self._sealed()
        seqs = {r.first_seq for r in sealed}
        return sorted(sealed + [r for r in self.local.segments() if not r.sealed and r.first_seq not in seqs])

    def read(self, ref: SegmentRef) -> bytes:
        if not ref.sealed:
            return self.local.read(ref)
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(f"segments/{ref.name}"))["Body"].read()
        return body

    def read_range(self, ref: SegmentRef, offset: int, length: int) -> bytes:
        if not ref.sealed:
            return self.local.read_range(ref, offset, length)
        body: bytes = self._range_client.get_object(Bucket=self.bucket, Key=self._key(f"segments/{ref.name}"),
                                                    Range=f"bytes={offset}-{offset + length - 1}")["Body"].read()
        return body

    def truncate(self, ref: SegmentRef, size: int) -> None:
        self.lease.check()
        self.local.truncate(ref, size)

    def open_active(self, first_seq: int) -> ActiveSegment:
        return GuardedSegment(self.local.open_active(first_seq), self.lease.check)

    def seal(self, first_seq: int) -> None:
        ref = SegmentRef(first_seq, False)
        data = self.local.read(ref)
        sealed = SegmentRef(first_seq, True)
        self.lease.verify()
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"segments/{sealed.name}"), Body=data)
        self.local.delete(ref)

    def delete(self, ref: SegmentRef) -> None:
        if ref.sealed:
            self.lease.verify()
            self.client.delete_object(Bucket=self.bucket, Key=self._key(f"segments/{ref.name}"))
        else:
            self.lease.check()
            self.local.delete(ref)

    def put_snapshot(self, name: str, data: bytes) -> None:
        self.lease.verify()
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
        self.lease.verify()
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"snapshots/{name}"))

    def put_index(self, first_seq: int, data: bytes) -> None:
        self.lease.verify()
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"indexes/{first_seq:020d}.idx"), Body=data)

    def get_index(self, first_seq: int) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(f"indexes/{first_seq:020d}.idx"))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no index for segment {first_seq}") from None
        body: bytes = obj["Body"].read()
        return body

    def indexes(self) -> list[int]:
        names: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                            Prefix=self._key("indexes/")):
            names += [obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", [])]
        return sorted(int(n[:-4]) for n in names if n.endswith(".idx") and n[:-4].isdigit())

    def delete_index(self, first_seq: int) -> None:
        self.lease.verify()
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"indexes/{first_seq:020d}.idx"))

    def put_blob(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"blobs/{check_blob_name(name)}"), Body=data)

    def get_blob(self, name: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(f"blobs/{check_blob_name(name)}"))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no blob {name}") from None
        body: bytes = obj["Body"].read()
        return body

    def delete_blob(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"blobs/{check_blob_name(name)}"))

    def describe(self, ref: SegmentRef) -> str:
        if ref.sealed:
            return f"s3://{self.bucket}/{self._key('segments/' + ref.name)}"
        return self.local.describe(ref)
