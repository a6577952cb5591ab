"""Notification channels: the log, and webhooks (signed HTTP POSTs, retried with backoff, each attempt recorded).

A webhook receives the alert as JSON with the header
`X-ShieldX-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the shared secret>`,
so a receiver can check both who sent it and that it is fresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from servers.compliance.alerts.store import AlertStore, Attempt, Notification

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-ShieldX-Signature"
LOG_CHANNEL = "log"

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Webhooks are called directly, never through a proxy from the environment."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_valid(secret: str, body: bytes, header: str) -> bool:
    """Whether `header` is a signature of `body` under `secret` (for receivers and tests)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        expected = sign(secret, body, int(parts["t"]))
    except (KeyError, ValueError):
        return False
    return hmac.compare_digest(expected, header)


@dataclass(frozen=True)
class Webhook:
    """A webhook endpoint and its shared secret."""

    url: str
    secret: str

    @property
    def channel(self) -> str:
        """The channel name recorded with each attempt."""
        return f"webhook:{self.url}"


@dataclass(frozen=True)
class RetryPolicy:
    """How failed deliveries are retried."""

    max_attempts: int = 8
    initial_backoff: timedelta = timedelta(seconds=1)
    max_backoff: timedelta = timedelta(minutes=10)
    timeout_seconds: float = 5.0

    def backoff(self, attempts: int) -> timedelta:
        """Delay after the `attempts`-th failure (doubling, capped)."""
        delay: timedelta = self.initial_backoff * 2 ** min(attempts - 1, 30)
        return min(self.max_backoff, delay)


class Notifier:
    """Delivers due notifications on their channels."""

    def __init__(
        self,
        store: AlertStore,
        webhooks: Sequence[Webhook],
        policy: RetryPolicy,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.webhooks = {w.channel: w for w in webhooks}
        self.policy = policy
        self.clock = clock
        self.wake = asyncio.Event()

    @property
    def channels(self) -> list[str]:
        """Every channel a notification goes to."""
        return [LOG_CHANNEL, *self.webhooks]

    async def deliver_due(self, limit: int = 100) -> int:
        """Attempt every due notification once; returns how many were attempted."""
        due = await self.store.due(self.clock(), limit)
        await asyncio.gather(*(self._deliver(n) for n in due))
        return len(due)

    async def _deliver(self, notification: Notification) -> None:
        attempt_number = notification.attempts + 1
        body = notification.payload.encode()
        status, error = 0, ""
        if notification.channel == LOG_CHANNEL:
            log.warning("compliance alert %s: %s", notification.reason, notification.payload)
            delivered = True
        else:
            hook = self.webhooks.get(notification.channel)
            if hook is None:
                delivered, error = False, "webhook no longer configured"
            else:
                delivered, status, error = await asyncio.to_thread(self._post, hook, body)
        now = self.clock()
        retry = not delivered and attempt_number < self.policy.max_attempts and error != "webhook no longer configured"
        await self.store.record_attempt(
            Attempt(
                f"att_{secrets.token_hex(8)}",
                notification.notification_id,
                notification.alert_id,
                notification.channel,
                notification.reason,
                attempt_number,
                delivered,
                status,
                error,
                now,
            ),
            now + self.policy.backoff(attempt_number) if retry else None,
        )

    def _post(self, hook: Webhook, body: bytes) -> tuple[bool, int, str]:
        request = urllib.request.Request(
            hook.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(hook.secret, body, int(time.time()))},
        )
        try:
            with _OPENER.open(request, timeout=self.policy.timeout_seconds) as answer:
                code = int(answer.status)
                return 200 <= code < 300, code, ""
        except urllib.error.HTTPError as error:
            return False, int(error.code), f"HTTP {error.code}"
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            return False, 0, f"{type(error).__name__}: {error}"[:300]
