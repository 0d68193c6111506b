"""Rebuild a service that lost its data from the journal (``coordinator replay``).

`replay` pages through the supervisor's ``outcomes(service, since_seq, limit)`` and
sends each journaled outcome and compensation, in journal order, with its original
idempotency key, to the service's replay endpoint:

``POST {url}/_replay`` with the JSON body ``{"entries": [entry, ...]}`` (one page per
request), each entry ``{"key", "workflow_id", "step", "kind", "value", "seq"}``:
``key`` is what the gateway sent, ``"{workflow_id}/{step}"`` for an outcome and
``"{workflow_id}/compensate/{step}"`` for a compensation; ``value`` is the result the
service answered then. The service applies each entry idempotently by key (an entry
whose key it knows changes nothing) and answers 2xx; the body may say
``{"applied": n, "present": m}``. Anything else stops the replay with `ReplayFailed`,
which names the sequence number to resume from (``--since-seq``): entries are
idempotent, so resending some is harmless.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

Fetch = Callable[[str, int, int], list[dict[str, Any]]]
"""``outcomes(service, since_seq, limit)``: journal entries with seq >= since_seq, in order."""
Send = Callable[[list[dict[str, Any]]], dict[str, Any]]
"""Deliver one page of entries; return the endpoint's answer or raise `ReplayFailed`."""

TIMEOUT_S = 30.0


class ReplayFailed(ConnectionError):
    """The endpoint refused or did not answer; ``resume_seq`` is where to start again."""

    def __init__(self, message: str, resume_seq: int | None = None) -> None:
        super().__init__(message)
        self.resume_seq = resume_seq


@dataclass
class Progress:
    """How far a replay went."""

    service: str
    url: str
    since_seq: int
    sent: int = 0
    acknowledged: int = 0
    applied: int = 0
    present: int = 0
    last_seq: int | None = None
    pages: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def idempotency_key(entry: dict[str, Any]) -> str:
    """The key the gateway sent for a journaled step (`workflows.context.Context.key`)."""
    middle = "compensate/" if entry.get("kind") == "compensation" else ""
    return f"{entry['workflow_id']}/{middle}{entry['step']}"


def http_sender(url: str, timeout_s: float = TIMEOUT_S) -> Send:
    """POST pages to ``{url}/_replay``; a non-2xx answer or no answer raises `ReplayFailed`."""
    target = url.rstrip("/") + "/_replay"

    def send(entries: list[dict[str, Any]]) -> dict[str, Any]:
        data = json.dumps({"entries": entries}).encode()
        request = urllib.request.Request(target, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            text = " ".join(exc.read().decode(errors="replace").split())[:200]
            raise ReplayFailed(f"{target} answered HTTP {exc.code}: {text}") from None
        except (OSError, ValueError) as exc:
            raise ReplayFailed(f"{target} did not answer: {getattr(exc, 'reason', None) or exc}") from None
        try:
            answer = json.loads(body) if body.strip() else {}
        except ValueError:
            answer = {}
        return answer if isinstance(answer, dict) else {}

    return send


def replay_entries(fetch: Fetch, send: Send, service: str, url: str = "", since_seq: int = 0, batch: int = 500,
                   on_page: Callable[[Progress], None] | None = None) -> Progress:
    """Send every journaled entry of ``service`` from ``since_seq`` on, a page at a time.

    ``since_seq`` is inclusive, as ``outcomes`` reads it; a page that ends inside one
    sequence number is followed by one from that number, skipping what was sent.
    Raises `ReplayFailed` naming the first sequence number of the page that failed.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    progress = Progress(service=service, url=url, since_seq=since_seq)
    since, sent_at_since = since_seq, set[str]()
    while True:
        limit = batch + len(sent_at_since)  # what was sent of ``since`` comes first again
        page = fetch(service, since, limit)
        fresh = [dict(e, key=idempotency_key(e)) for e in page]
        fresh = [e for e in fresh if not (e["seq"] == since and e["key"] in sent_at_since)]
        if not fresh:
            return progress
        progress.sent += len(fresh)
        try:
            answer = send(fresh)
        except ReplayFailed as exc:
            resume = int(fresh[0]["seq"])
            raise ReplayFailed(f"replay of {service} stopped at seq {resume} ({exc}); "
                               f"resume with --since-seq {resume}", resume) from None
        progress.acknowledged += len(fresh)
        progress.applied += int(answer.get("applied", 0) or 0)
        progress.present += int(answer.get("present", 0) or 0)
        progress.pages += 1
        last = int(fresh[-1]["seq"])
        progress.last_seq = last
        if on_page is not None:
            on_page(progress)
        if len(page) < limit:
            return progress
        keys_at_last = {e["key"] for e in fresh if e["seq"] == last}
        sent_at_since = (sent_at_since | keys_at_last) if last == since else keys_at_last
        since = last


def replay(supervisor: Any, service: str, url: str, since_seq: int = 0, batch: int = 500,
           on_page: Callable[[Progress], None] | None = None, send: Send | None = None) -> Progress:
    """Rebuild ``service`` at ``url`` from the journal of the coordinator behind ``supervisor``
    (a SupervisorActor handle), over HTTP unless ``send`` is given."""
    import ray

    def fetch(name: str, since: int, limit: int) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = ray.get(supervisor.outcomes.remote(name, since, limit))
        return entries

    return replay_entries(fetch, send or http_sender(url), service, url, since_seq, batch, on_page)
