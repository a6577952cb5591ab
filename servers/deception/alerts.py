"""Alerts deduplicated per source: a port scan of a thousand connections is one alert with a count.

Events of the same kind from the same source fold into one open alert while each arrives
within the deduplication window of the alert's previous event (and the alert is younger than
its maximum span). A more severe event raises the alert's severity and marks the update as an
escalation, so the service notifies again only when something new is learned.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from servers.deception.domain import AlertKind, Interaction, ReconStage, Severity, parse_source_address, time_cursor
from servers.mesh.errors import InvalidArgument, NotFound
from servers.mesh.pagination import page_request

MAX_DECOYS_PER_ALERT = 64


@dataclass
class Alert:
    """An alert: every matching event from one source within the window."""

    alert_id: str
    """Unique id."""
    kind: AlertKind
    """What raised it."""
    severity: Severity
    """The most severe event folded in."""
    source_address: str
    """Source IP address."""
    first_time: datetime
    """First event folded in."""
    last_time: datetime
    """Latest event folded in."""
    count: int = 0
    """Events folded in."""
    stage: ReconStage | None = None
    """The furthest reconnaissance stage seen."""
    decoy_ids: list[str] = field(default_factory=list)
    """Decoys involved, in order of first contact (bounded)."""
    session_id: str = ""
    """The source's session at the latest event."""
    batch_id: str = ""
    """Honeytoken alerts: the batch the token came from."""
    honeytoken_id: str = ""
    """Honeytoken alerts: the token presented."""
    summary: str = ""
    """One line for a person."""


@dataclass(frozen=True)
class AlertUpdate:
    """What observing one event did to the alerts."""

    alert: Alert
    """The alert after the event (a copy)."""
    created: bool
    """The event opened a new alert."""
    escalated: bool
    """The event raised an existing alert's severity."""

    @property
    def notify(self) -> bool:
        """Whether to tell people (compliance, on-call): new alert or escalation."""
        return self.created or self.escalated


@dataclass(frozen=True)
class DeduplicationPolicy:
    """How events fold into alerts."""

    window: timedelta = timedelta(minutes=10)
    """An event within this long of the open alert's latest event folds into it."""
    max_span: timedelta = timedelta(hours=24)
    """An alert older than this is closed even while events keep coming (a slow scan gets a daily alert)."""
    max_open: int = 100_000
    """Open alerts tracked for folding; beyond, the least recently updated stop folding."""

    def __post_init__(self) -> None:
        if self.window <= timedelta(0) or self.max_span < self.window:
            raise InvalidArgument("window", "must be positive and no longer than max_span")
        if self.max_open < 1:
            raise InvalidArgument("max_open", "must be positive")


class AlertBook:
    """Every alert, and the open alert of each (kind, source)."""

    def __init__(self, policy: DeduplicationPolicy | None = None, *, new_id: Callable[[], str] | None = None) -> None:
        self.policy = policy or DeduplicationPolicy()
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._alerts: dict[str, Alert] = {}
        self._open: OrderedDict[tuple[AlertKind, str, str], str] = OrderedDict()

    def observe(
        self,
        *,
        kind: AlertKind,
        source_address: str,
        time: datetime,
        stage: ReconStage,
        severity: Severity | None = None,
        decoy_id: str = "",
        session_id: str = "",
        batch_id: str = "",
        honeytoken_id: str = "",
    ) -> AlertUpdate:
        """Fold one event into its open alert, or open one."""
        if time.tzinfo is None:
            raise InvalidArgument("time", "must carry a time zone")
        source = parse_source_address(source_address)
        when = time.astimezone(UTC)
        level = severity or Severity.of_stage(stage)
        # Different honeytokens are different leaks: never fold one into another's alert.
        key = (kind, source, honeytoken_id)
        alert = self._foldable(key, when)
        created = alert is None
        if alert is None:
            alert = Alert(
                self._new_id(), kind, level, source, when, when, batch_id=batch_id, honeytoken_id=honeytoken_id
            )
            self._alerts[alert.alert_id] = alert
            self._open[key] = alert.alert_id
            while len(self._open) > self.policy.max_open:
                self._open.popitem(last=False)
        self._open.move_to_end(key)
        escalated = not created and level > alert.severity
        alert.severity = max(alert.severity, level)
        alert.count += 1
        alert.stage = stage if alert.stage is None else max(alert.stage, stage)
        alert.first_time = min(alert.first_time, when)
        alert.last_time = max(alert.last_time, when)
        if decoy_id and decoy_id not in alert.decoy_ids and len(alert.decoy_ids) < MAX_DECOYS_PER_ALERT:
            alert.decoy_ids.append(decoy_id)
        alert.session_id = session_id or alert.session_id
        alert.summary = _summary(alert)
        return AlertUpdate(_copy(alert), created, escalated)

    def observe_interaction(self, interaction: Interaction, session_id: str = "") -> AlertUpdate:
        """Fold a decoy interaction into its source's decoy alert."""
        return self.observe(
            kind=AlertKind.DECOY_INTERACTION,
            source_address=interaction.source_address,
            time=interaction.start_time,
            stage=interaction.stage,
            decoy_id=interaction.decoy_id,
            session_id=session_id,
        )

    def get(self, alert_id: str) -> Alert:
        """A copy of one alert; NotFound if unknown."""
        try:
            return _copy(self._alerts[alert_id])
        except KeyError:
            raise NotFound("alert", alert_id[:64]) from None

    def list_alerts(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        source_address: str = "",
        min_severity: Severity | None = None,
    ) -> tuple[list[Alert], str]:
        """One page of alerts, most recently updated first, and the next page's token."""
        source = parse_source_address(source_address) if source_address.strip() else ""
        page = page_request(page_size, page_token, {"source_address": source, "min_severity": int(min_severity or 0)})
        chosen = [
            a
            for a in self._alerts.values()
            if (not source or a.source_address == source) and (min_severity is None or a.severity >= min_severity)
        ]
        chosen.sort(key=lambda a: (a.last_time, a.alert_id), reverse=True)
        if page.cursor:
            after = time_cursor(page.cursor)
            chosen = [a for a in chosen if (a.last_time, a.alert_id) < after]
        result = [_copy(a) for a in chosen[: page.size]]
        more = len(chosen) > page.size
        cursor = {"t": result[-1].last_time.isoformat(), "id": result[-1].alert_id} if more else None
        return result, page.next_token(cursor)

    def restore(self, alerts: list[Alert]) -> None:
        """Load persisted alerts; the latest of each (kind, source) becomes open again."""
        for alert in sorted(alerts, key=lambda a: a.last_time):
            self._alerts[alert.alert_id] = _copy(alert)
            self._open[(alert.kind, alert.source_address, alert.honeytoken_id)] = alert.alert_id

    def _foldable(self, key: tuple[AlertKind, str, str], when: datetime) -> Alert | None:
        alert_id = self._open.get(key)
        if alert_id is None:
            return None
        alert = self._alerts[alert_id]
        window = self.policy.window
        if not alert.first_time - window <= when <= alert.last_time + window:
            return None
        if max(alert.last_time, when) - min(alert.first_time, when) > self.policy.max_span:
            return None
        return alert


def _copy(alert: Alert) -> Alert:
    return replace(alert, decoy_ids=list(alert.decoy_ids))


def _summary(alert: Alert) -> str:
    stage = alert.stage.name.lower().replace("_", " ") if alert.stage else "activity"
    what = {
        AlertKind.DECOY_INTERACTION: f"decoy connection{'s' if alert.count != 1 else ''}",
        AlertKind.RECON: f"reconnaissance report{'s' if alert.count != 1 else ''}",
        AlertKind.HONEYTOKEN_USED: f"use{'s' if alert.count != 1 else ''} of honeytoken {alert.honeytoken_id}",
    }[alert.kind]
    text = f"{alert.count} {what} from {alert.source_address}, furthest stage {stage}"
    if alert.batch_id:
        text += f", planted in batch {alert.batch_id}"
    return text
