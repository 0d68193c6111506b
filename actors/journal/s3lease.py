"""The writer's lease on an ``s3://`` storage: the fencing of `actors.journal.s3`.

The protocol (take, renew, lose, check before writes) is numbered in that module's
docstring; this class implements it for one storage: `acquire` and `release` the
lease, a daemon thread renewing it, and `check` / `verify` for every write.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog
from botocore.exceptions import ClientError, ResponseStreamingError

from workflows.errors import Fenced

log = structlog.get_logger("journal.s3")

LEASE_READ_ATTEMPTS = 5


class S3Lease:
    """The lease object ``key`` in ``bucket``, held for one owner at a time.

    ``client`` makes the lease writes at start; ``lease_client`` (short timeouts, no
    retries inside botocore) makes every other lease request. ``renewals`` and
    ``renewal_failures`` count the renewal thread's attempts.
    """

    def __init__(self, client: Any, lease_client: Any, bucket: str, key: str, uri: str, lease_s: float,
                 request_s: float) -> None:
        self.client = client
        self._lease_client = lease_client
        self.bucket = bucket
        self.key = key
        self.uri = uri
        self.lease_s = lease_s
        self._request_s = request_s
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

    def read(self) -> dict[str, Any] | None:
        """The lease object, or None if there is none. A read that races the holder's
        write of it (rclone: a 500, a short or half-written body) is tried again a few
        times within ~0.3 s; an unreachable store raises at the first attempt."""
        for attempt in range(LEASE_READ_ATTEMPTS):
            if attempt:
                time.sleep(0.01 * 2**attempt)
            try:
                body = self._lease_client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
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

    def _write(self, client: Any, owner: str) -> float:
        """Write ``owner``'s lease; return the monotonic time it is valid until."""
        sent = time.monotonic()
        body = json.dumps({"owner": owner, "expires": time.time() + self.lease_s}).encode()
        client.put_object(Bucket=self.bucket, Key=self.key, Body=body)
        return sent + self.lease_s

    def acquire(self, owner: str) -> None:
        """Take the lease for ``owner`` (`Fenced` if another holds it) and start renewing."""
        self.stop_renewing()
        lease = self.read()
        if lease is not None and lease["owner"] != owner and lease["expires"] > time.time():
            raise Fenced(f"storage {self.uri} is held by another coordinator: {lease['owner']}")
        valid_until = self._write(self.client, owner)
        lease = self.read()
        if lease is None or lease["owner"] != owner:
            raise Fenced(f"storage {self.uri} was taken by another coordinator at the same time")
        with self._guard:
            self._owner, self._valid_until, self._lost, self._last_error = owner, valid_until, None, ""
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_loop, args=(self._stop,), daemon=True,
                                         name=f"s3-lease-{self.bucket}/{self.key}")
        self._renewer.start()

    def renew(self) -> None:
        """Extend the lease by ``lease_s``; `Fenced` if it is lost: another owner holds
        it, or it runs out before a renewal could land. Store errors propagate."""
        self.check()
        with self._guard:
            owner = self._owner
        assert owner is not None  # _check raised otherwise
        self._check_time_to_renew()
        lease = self.read()
        if lease is not None and lease["owner"] != owner:
            raise Fenced(f"storage {self.uri} was taken over by {lease['owner']}")
        self._check_time_to_renew()
        valid_until = self._write(self._lease_client, owner)
        lease = self.read()
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

    def check(self) -> None:
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

    def verify(self) -> None:
        """`_check`, then re-read the lease: it must name this owner and be unexpired."""
        self.check()
        lease = self.read()
        with self._guard:
            owner = self._owner
        if lease is None or lease["owner"] != owner:
            taker = lease["owner"] if lease is not None else "nobody (the lease object is gone)"
            self._lose(f"storage {self.uri} was taken over by {taker}")
        elif lease["expires"] <= time.time():
            self._lose(f"lease on {self.uri} expired at {lease['expires']:.3f} (wall clock)")
        self.check()

    def release(self) -> None:
        """Stop renewing and delete the lease if it still names this owner. The store
        being unreachable is logged, not raised: the lease then runs out by itself."""
        self.stop_renewing()
        with self._guard:
            owner, self._owner, self._lost = self._owner, None, None
        try:
            if owner is not None:
                lease = self.read()
                if lease is not None and lease["owner"] == owner:
                    self._lease_client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # releasing is a courtesy; the lease expires anyway
            log.warning("lease_release_failed", storage=self.uri, error=repr(exc))
