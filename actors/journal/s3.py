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
import json
import os
import tempfile
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import ClientError, ResponseStreamingError

from actors.journal.backends import ActiveSegment, Backend, GuardedSegment, SegmentRef, parse_names
from actors.journal.files import FileBackend
from workflows.errors import Fenced

log = structlog.get_logger("journal.s3")

LEASE_S = 30.0
# Share of the lease each lease request may spend connecting, and again reading.
REQUEST_SHARE = 0.1
LEASE_READ_ATTEMPTS = 5


class S3Backend(Backend):
    """Active segments on local disk, sealed ones and snapshots in S3, fenced by a lease.

    ``lease_s`` given here wins over ``?lease_s=`` in the URI, which wins over `LEASE_S`.
    ``renewals`` and ``renewal_failures`` count the renewal thread's attempts.
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
        digest = hashlib.sha1(f"{self.bucket}/{self.prefix}".encode()).hexdigest()[:16]
        wal = query.get("wal", [os.path.join(tempfile.gettempdir(), "coordinator-wal", digest)])[0]
        self.local = FileBackend(wal)
        self.renewals = 0
        self.renewal_failures = 0
        # Shared with the renewal thread, under ``_guard``.
        self._guard = threading.Lock()
        self._owner: str | None = None
        self._valid_until = 0.0  # monotonic
        self._lost: str | None = None
        self._last_error = ""
        self._stop: threading.Event | None = None
        self._renewer: threading.Thread | None = None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    # --- the lease ------------------------------------------------------------------------

    def _read_lease(self) -> dict[str, Any] | None:
        """The lease object, or None if there is none. A read that races the holder's
        write of it (rclone: a 500, a short or half-written body) is tried again a few
        times within ~0.3 s; an unreachable store raises at the first attempt."""
        for attempt in range(LEASE_READ_ATTEMPTS):
            if attempt:
                time.sleep(0.01 * 2**attempt)
            try:
                body = self._lease_client.get_object(Bucket=self.bucket, Key=self._key("LOCK"))["Body"].read()
                lease: dict[str, Any] = json.loads(body)
                return lease
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                if status < 500 or attempt == LEASE_READ_ATTEMPTS - 1:
                    raise
            except (ResponseStreamingError, ValueError):
                if attempt == LEASE_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _write_lease(self, client: Any, owner: str) -> float:
        """Write ``owner``'s lease; return the monotonic time it is valid until."""
        sent = time.monotonic()
        body = json.dumps({"owner": owner, "expires": time.time() + self.lease_s}).encode()
        client.put_object(Bucket=self.bucket, Key=self._key("LOCK"), Body=body)
        return sent + self.lease_s

    def lock(self, owner: str) -> None:
        """Take the storage for ``owner`` (see the module docstring) and start renewing."""
        self.stop_renewing()
        self.local.lock(owner)
        try:
            lease = self._read_lease()
            if lease is not None and lease["owner"] != owner and lease["expires"] > time.time():
                raise Fenced(f"storage {self.uri} is held by another coordinator: {lease['owner']}")
            valid_until = self._write_lease(self.client, owner)
            lease = self._read_lease()
            if lease is None or lease["owner"] != owner:
                raise Fenced(f"storage {self.uri} was taken by another coordinator at the same time")
        except BaseException:
            self.local.unlock()
            raise
        with self._guard:
            self._owner, self._valid_until, self._lost, self._last_error = owner, valid_until, None, ""
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, args=(self._stop,), daemon=True,
                                         name=f"s3-lease-{self.bucket}/{self.prefix}")
        self._renewer.start()

    def renew(self) -> None:
        """Extend the lease by ``lease_s``; `Fenced` if it is lost: another owner holds
        it, or it runs out before a renewal could land. Store errors propagate."""
        self._check()
        with self._guard:
            owner = self._owner
        assert owner is not None  # _check raised otherwise
        self._check_time_to_renew()
        lease = self._read_lease()
        if lease is not None and lease["owner"] != owner:
            raise Fenced(f"storage {self.uri} was taken over by {lease['owner']}")
        self._check_time_to_renew()
        valid_until = self._write_lease(self._lease_client, owner)
        lease = self._read_lease()
        if lease is None or lease["owner"] != owner:
            taker = lease["owner"] if lease is not None else "nobody (the lease object is gone)"
            raise Fenced(f"storage {self.uri} was taken over by {taker}")
        with self._guard:
            self._valid_until = max(self._valid_until, valid_until)

    def _check_time_to_renew(self) -> None:
        """`Fenced` once a lease write could still be in flight when the lease ends: it
        might land after another owner took the storage and overwrite its lease."""
        with self._guard:
            if time.monotonic() + 2 * self._request_s >= self._valid_until:
                raise Fenced(self._expired_reason())

    def _renew_loop(self, stop: threading.Event) -> None:
        """Renew every ``lease_s / 3`` until ``stop``; on failure retry sooner, backing
        off, while the lease lasts; a lost lease ends the loop."""
        interval = self.lease_s / 3
        # Retries back off from a fiftieth to a tenth of the lease: several attempts fit
        # in what is left of it, so a store back shortly before the end is caught.
        first_backoff, max_backoff = self.lease_s / 50, self.lease_s / 10
        delay, backoff = interval, first_backoff
        while not stop.wait(delay):
            try:
                self.renew()
            except Fenced as exc:
                if not stop.is_set():  # after unlock the lease is no longer this loop's to lose
                    self._lose(str(exc))
                return
            except Exception as exc:  # the one catch-all: any failed renewal is retried while the lease lasts
                self.renewal_failures += 1
                with self._guard:
                    self._last_error = repr(exc)
                    left = self._valid_until - time.monotonic()
                log.warning("lease_renewal_failed", storage=self.uri, error=repr(exc), lease_left_s=round(left, 3))
                # Wake at the latest when a renewal can no longer be sent, to mark the
                # lease lost then rather than at the writer's next append.
                delay = max(0.0, min(backoff, left - 2 * self._request_s))
                backoff = min(backoff * 2, max_backoff)
                continue
            self.renewals += 1
            delay, backoff = interval, first_backoff

    def stop_renewing(self) -> None:
        """Stop the renewal thread and keep the lease until it runs out, as a process
        that hangs would; then `Fenced` at the next write. A fault-injection point."""
        if self._stop is not None:
            self._stop.set()
        if self._renewer is not None:
            # A renewal in flight ends within its request timeouts.
            self._renewer.join(timeout=self.lease_s)
            self._renewer = None

    def _expired_reason(self) -> str:
        cause = self._last_error or "no renewal ran"
        return f"lease on {self.uri} expired: not renewed within {self.lease_s:g} s (last error: {cause})"

    def _lose(self, reason: str) -> None:
        with self._guard:
            if self._lost is not None:
                return
            self._lost = reason
        log.error("lease_lost", storage=self.uri, reason=reason)

    def _check(self) -> None:
        """`Fenced` unless this backend holds an unexpired lease it has not lost."""
        with self._guard:
            if self._owner is None:
                reason: str | None = f"storage {self.uri} is not locked by this coordinator"
            else:
                if self._lost is None and time.monotonic() >= self._valid_until:
                    self._lost = self._expired_reason()
                reason = self._lost
        if reason is not None:
            raise Fenced(reason)

    def _verify(self) -> None:
        """`_check`, then re-read the lease: it must name this owner and be unexpired."""
        self._check()
        lease = self._read_lease()
        with self._guard:
            owner = self._owner
        if lease is None or lease["owner"] != owner:
            taker = lease["owner"] if lease is not None else "nobody (the lease object is gone)"
            self._lose(f"storage {self.uri} was taken over by {taker}")
        elif lease["expires"] <= time.time():
            self._lose(f"lease on {self.uri} expired at {lease['expires']:.3f} (wall clock)")
        self._check()

    def unlock(self) -> None:
        """Stop renewing and delete the lease if it still names this owner. The store
        being unreachable is logged, not raised: the lease then runs out by itself."""
        self.stop_renewing()
        with self._guard:
            owner, self._owner, self._lost = self._owner, None, None
        try:
            if owner is not None:
                lease = self._read_lease()
                if lease is not None and lease["owner"] == owner:
                    self._lease_client.delete_object(Bucket=self.bucket, Key=self._key("LOCK"))
        except Exception as exc:  # releasing is a courtesy; the lease expires anyway
            log.warning("lease_release_failed", storage=self.uri, error=repr(exc))
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

    def truncate(self, ref: SegmentRef, size: int) -> None:
        self._check()
        self.local.truncate(ref, size)

    def open_active(self, first_seq: int) -> ActiveSegment:
        return GuardedSegment(self.local.open_active(first_seq), self._check)

    def seal(self, first_seq: int) -> None:
        ref = SegmentRef(first_seq, False)
        data = self.local.read(ref)
        sealed = SegmentRef(first_seq, True)
        self._verify()
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"segments/{sealed.name}"), Body=data)
        self.local.delete(ref)

    def delete(self, ref: SegmentRef) -> None:
        if ref.sealed:
            self._verify()
            self.client.delete_object(Bucket=self.bucket, Key=self._key(f"segments/{ref.name}"))
        else:
            self._check()
            self.local.delete(ref)

    def put_snapshot(self, name: str, data: bytes) -> None:
        self._verify()
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
        self._verify()
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"snapshots/{name}"))

    def describe(self, ref: SegmentRef) -> str:
        if ref.sealed:
            return f"s3://{self.bucket}/{self._key('segments/' + ref.name)}"
        return self.local.describe(ref)
