"""Reports refused client credentials to the deception service, which knows the planted honeytokens.

A honeytoken is a fake client id and secret planted in generated data; the only way to learn
that someone holds one is to see it presented. IssueToken must not wait for that report, so
refusals go into a bounded queue that a background task drains; if the deception service is
away the reports wait (and the oldest are dropped, counted, when the queue is full).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter

from clients.backoff import Backoff
from clients.deception import DeceptionClient, report_presented_credential
from clients.errors import ShieldxError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PresentedCredential:
    """A client id and secret the token service refused."""

    source_address: str
    client_id: str
    secret: str
    detail: str = "client credentials refused"
    """What was refused, for the deception service's record."""


class ReconReporter:
    """Queues refused credentials and sends them to deception's LogRecon in the background."""

    def __init__(
        self, channel: Callable[[], grpc.aio.Channel], registry: CollectorRegistry, capacity: int = 1000
    ) -> None:
        self._channel = channel
        self._queue: asyncio.Queue[PresentedCredential] = asyncio.Queue(capacity)
        self._outcomes = Counter(
            "shieldx_tokens_recon_reports_total",
            "Refused credentials reported to the deception service, by outcome.",
            ["outcome"],
            registry=registry,
        )

    def report(self, presented: PresentedCredential) -> None:
        """Queue a refused credential (never blocks; drops the oldest when full)."""
        if self._queue.full():
            self._queue.get_nowait()
            self._outcomes.labels(outcome="dropped").inc()
        self._queue.put_nowait(presented)

    async def run(self) -> None:
        """Background loop: deliver queued reports, retrying with backoff while deception is away."""
        client = DeceptionClient(self._channel(), default_timeout=10)
        while True:
            presented = await self._queue.get()
            backoff = Backoff(0.5, 30.0)
            while True:
                try:
                    answer = await report_presented_credential(
                        client,
                        source_address=presented.source_address,
                        claimed_subject=presented.client_id,
                        secret=presented.secret,
                        reporting_service="shieldx.tokens.v1.TokenService",
                        method="/shieldx.tokens.v1.TokenService/IssueToken",
                        detail=presented.detail,
                    )
                except ShieldxError as error:
                    if error.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        log.warning("deception refused a recon report: %s", error)
                        self._outcomes.labels(outcome="refused").inc()
                        break
                    await asyncio.sleep(backoff.next())
                    continue
                outcome = "honeytoken" if answer.honeytoken_matched else "reported"
                self._outcomes.labels(outcome=outcome).inc()
                if answer.honeytoken_matched:
                    log.warning(
                        "a planted honeytoken was presented to the token service",
                        extra={"client_id": presented.client_id, "source": presented.source_address},
                    )
                break
