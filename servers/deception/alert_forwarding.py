"""Forwarding deception alerts to the compliance service's RaiseAlert, with retries that survive restarts.

A new alert or an escalation is written as a notification in the same transaction that
changed the alert, holding the exact RaiseAlertRequest to send. A background loop delivers due
notifications and, when compliance does not take one (down, UNIMPLEMENTED, refusing our token),
keeps it pending and tries again with exponential backoff. Nothing here ever blocks or fails a
deception RPC: the worst case is an alert that reaches compliance late.

The request id of each delivery is the notification id, and the dedup key names the deception
alert, so a retried delivery is applied once and an escalation folds into the compliance alert
raised for the same deception alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from clients.compliance import ComplianceClient
from clients.errors import ShieldxError
from servers.deception.alert_store import AlertStore, Notification
from servers.deception.alerts import Alert
from servers.deception.domain import AlertKind
from servers.mesh.config import bounded
from shieldx.compliance.v1 import compliance_pb2

log = logging.getLogger(__name__)

SOURCE = "shieldx.deception.v1.DeceptionService"
"""How compliance names the deception service as an alert source."""

CATEGORIES = {
    AlertKind.DECOY_INTERACTION: "decoy_interaction",
    AlertKind.RECON: "reconnaissance",
    AlertKind.HONEYTOKEN_USED: "honeytoken_used",
}
"""Compliance alert category of each kind of deception alert."""

# Refusals that a retry of the same request cannot turn into a success.
_PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})


def notification_id(alert: Alert) -> str:
    """One notification per alert and severity: severities only rise, so each escalation gets its own."""
    return f"deception-{alert.alert_id}-{alert.severity.name.lower()}"


def _title(alert: Alert) -> str:
    if alert.kind is AlertKind.HONEYTOKEN_USED:
        return f"Honeytoken {alert.honeytoken_id} from batch {alert.batch_id} used from {alert.source_address}"
    stage = alert.stage.name.lower().replace("_", " ") if alert.stage else "activity"
    if alert.kind is AlertKind.RECON:
        return f"Reconnaissance from {alert.source_address} reported by the mesh ({stage})"
    return f"Decoy activity from {alert.source_address} ({stage})"


def notification_for(alert: Alert) -> Notification:
    """The notification (and RaiseAlert request) announcing `alert` as it is now."""
    ident = notification_id(alert)
    attributes = {
        "alert_id": alert.alert_id,
        "kind": CATEGORIES[alert.kind],
        "count": str(alert.count),
    }
    if alert.stage is not None:
        attributes["stage"] = alert.stage.name.lower()
    if alert.session_id:
        attributes["session_id"] = alert.session_id
    if alert.decoy_ids:
        attributes["decoy_ids"] = ",".join(alert.decoy_ids)[:1000]
    if alert.batch_id:
        attributes["batch_id"] = alert.batch_id
    if alert.honeytoken_id:
        attributes["honeytoken_id"] = alert.honeytoken_id
    request = compliance_pb2.RaiseAlertRequest(
        source=SOURCE,
        category=CATEGORIES[alert.kind],
        severity=compliance_pb2.Severity.ValueType(alert.severity),
        title=_title(alert)[:200],
        description=(
            f"{alert.summary}. Session {alert.session_id or 'unknown'}; "
            f"first seen {alert.first_time.isoformat()}, last seen {alert.last_time.isoformat()}."
        )[:4000],
        subject=alert.session_id or alert.alert_id,
        source_address=alert.source_address,
        attributes=attributes,
        dedup_key=f"deception-alert/{alert.alert_id}",
        request_id=ident,
    )
    request.occur_time.FromDatetime(alert.last_time)
    return Notification(ident, alert.alert_id, alert.severity, request.SerializeToString(deterministic=True))


@dataclass(frozen=True)
class ForwardingPolicy:
    """How alerts are delivered to compliance."""

    initial_backoff_seconds: float = bounded(1.0, above=0)
    """Delay before the first retry of a failed delivery."""
    max_backoff_seconds: float = bounded(300.0, above=0)
    """Longest delay between two attempts (the delay doubles per failure up to this)."""
    call_timeout_seconds: float = bounded(10.0, above=0)
    """Deadline of one RaiseAlert call."""
    batch_size: int = bounded(50, at_least=1)
    """Notifications delivered per pass."""
    poll_seconds: float = bounded(5.0, above=0)
    """Longest sleep between passes when nothing wakes the loop."""

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failure, with ±20 % jitter."""
        base = min(self.max_backoff_seconds, self.initial_backoff_seconds * 2 ** min(attempts - 1, 30))
        return float(base * random.uniform(0.8, 1.2))


class AlertForwarder:
    """Delivers queued alert notifications to compliance; `run` is the background loop."""

    def __init__(
        self,
        store: AlertStore,
        compliance: ComplianceClient,
        policy: ForwardingPolicy | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._compliance = compliance
        self.policy = policy or ForwardingPolicy()
        self._clock = clock
        self._wake = asyncio.Event()
        registry = registry if registry is not None else CollectorRegistry()
        self._outcomes = Counter(
            "shieldx_deception_alert_forwards",
            "Deliveries of deception alerts to the compliance service, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._pending = Gauge(
            "shieldx_deception_alert_forwards_pending",
            "Deception alerts queued for the compliance service and not delivered yet.",
            registry=registry,
        )

    def wake(self) -> None:
        """Deliver soon: new notifications were committed."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver due notifications until cancelled; a failing pass is logged and retried later."""
        failures = 0
        while True:
            try:
                await self.forward_due()
                failures = 0
                delay = await self._idle_time()
            except Exception:
                failures += 1
                delay = self.policy.backoff(failures)
                log.exception("forwarding alerts to compliance failed; retrying in %.1f s", delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def forward_due(self) -> int:
        """Try every due notification once; returns how many were delivered."""
        delivered = 0
        while True:
            due = await self._store.due(self._clock(), self.policy.batch_size)
            for notification in due:
                delivered += await self._deliver(notification)
            if len(due) < self.policy.batch_size:
                break
        self._pending.set(await self._store.pending())
        return delivered

    async def _idle_time(self) -> float:
        upcoming = await self._store.next_due_time()
        if upcoming is None:
            return self.policy.poll_seconds
        wait = (upcoming - self._clock()).total_seconds()
        return min(self.policy.poll_seconds, max(wait, 0.05))

    async def _deliver(self, notification: Notification) -> int:
        attempts = notification.attempts + 1
        request = compliance_pb2.RaiseAlertRequest.FromString(notification.request)
        try:
            await self._compliance.raise_alert(request, timeout=self.policy.call_timeout_seconds)
        except ShieldxError as error:
            await self._failed(notification, attempts, error.code, f"{error.code.name}: {error.message}")
            return 0
        except (grpc.RpcError, OSError) as error:
            await self._failed(notification, attempts, grpc.StatusCode.UNAVAILABLE, f"{type(error).__name__}: {error}")
            return 0
        await self._store.delivered(notification.notification_id, attempts, self._clock())
        self._outcomes.labels("delivered").inc()
        log.info(
            "alert %s forwarded to compliance after %d attempt(s)",
            notification.alert_id,
            attempts,
            extra={"notification_id": notification.notification_id},
        )
        return 1

    async def _failed(self, notification: Notification, attempts: int, code: grpc.StatusCode, error: str) -> None:
        if code in _PERMANENT:
            await self._store.failed(notification.notification_id, attempts, error, None)
            self._outcomes.labels("abandoned").inc()
            log.error(
                "compliance refused alert %s for good (%s); it will not be forwarded",
                notification.alert_id,
                error,
                extra={"notification_id": notification.notification_id},
            )
            return
        delay = self.policy.backoff(attempts)
        retry_at = self._clock() + timedelta(seconds=delay)
        await self._store.failed(notification.notification_id, attempts, error, retry_at)
        self._outcomes.labels("retry").inc()
        # Compliance may stay away for hours: log the first failures, then only at powers of two.
        level = logging.WARNING if attempts & (attempts - 1) == 0 else logging.DEBUG
        hint = " (compliance does not implement RaiseAlert yet)" if code == grpc.StatusCode.UNIMPLEMENTED else ""
        log.log(
            level,
            "alert %s not forwarded to compliance%s: %s; attempt %d, next in %.1f s",
            notification.alert_id,
            hint,
            error,
            attempts,
            delay,
            extra={"notification_id": notification.notification_id},
        )
