"""Attacker sessions: the timeline of everything one source did, from decoys and from other services.

A source's events belong to its open session until it has been idle for the idle timeout;
the next event opens a new session. Sessions can also be opened by hand (CreateSession), and
other services add events with LogRecon. The book is in memory; the store layer persists
sessions and events and rebuilds a book with `restore`.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from servers.deception.domain import (
    Interaction,
    ReconReport,
    ReconStage,
    offset_cursor,
    parse_source_address,
    require_text,
    time_cursor,
)
from servers.mesh.errors import InvalidArgument, NotFound
from servers.mesh.pagination import page_request

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class SessionEvent:
    """One entry of a session's timeline."""

    event_id: str
    """Unique id."""
    session_id: str
    """The session it belongs to."""
    time: datetime
    """When it happened (UTC); a decoy interaction's time is when its connection opened."""
    stage: ReconStage
    """The stage it was classified as."""
    summary: str
    """One line for a person."""
    interaction: Interaction | None = None
    """The decoy interaction, for events from decoys."""
    recon: ReconReport | None = None
    """The report, for events from other services."""


@dataclass
class Session:
    """An attacker session."""

    session_id: str
    """Unique id."""
    source_address: str
    """Source IP address (canonical form)."""
    create_time: datetime
    """When it was opened."""
    last_event_time: datetime
    """When its latest event happened (its creation time until the first event)."""
    event_count: int = 0
    """Events recorded, including any beyond the stored timeline's cap."""
    stage: ReconStage | None = None
    """The furthest stage reached; None before the first event."""
    decoy_ids: list[str] = field(default_factory=list)
    """Decoys touched, in order of first contact."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels given at creation."""


@dataclass(frozen=True)
class SessionPolicy:
    """How events are grouped into sessions."""

    idle_timeout: timedelta = timedelta(minutes=30)
    """A source idle for longer starts a new session with its next event."""
    max_events_per_session: int = 10_000
    """Timeline entries kept per session; later ones are counted and folded into the stage only."""
    max_labels: int = 32
    """Labels accepted on CreateSession."""


class SessionBook:
    """Every session and its timeline, with the open session of each source."""

    def __init__(
        self,
        policy: SessionPolicy | None = None,
        *,
        clock: Clock | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.policy = policy or SessionPolicy()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self._sessions: dict[str, Session] = {}
        self._timelines: dict[str, list[SessionEvent]] = {}
        self._by_source: dict[str, list[str]] = {}

    # --- commands ---

    def create_session(self, source_address: str, labels: Mapping[str, str] | None = None) -> Session:
        """Open a session for a source; it becomes the source's open session."""
        source = parse_source_address(source_address)
        checked = self._check_labels(labels or {})
        now = self._clock()
        session = Session(self._new_id(), source, now, now, labels=checked)
        self._add(session)
        return replace(session, decoy_ids=list(session.decoy_ids), labels=dict(session.labels))

    def record_interaction(self, interaction: Interaction) -> SessionEvent:
        """Add a decoy interaction to its source's open session (opening one if needed)."""
        session = self._open_session(interaction.source_address, interaction.start_time)
        summary = _interaction_summary(interaction)
        event = SessionEvent(
            self._new_id(),
            session.session_id,
            interaction.start_time,
            interaction.stage,
            summary,
            interaction=interaction,
        )
        self._append(session, event)
        if interaction.decoy_id not in session.decoy_ids:
            session.decoy_ids.append(interaction.decoy_id)
        return event

    def log_recon(
        self,
        source_address: str,
        report: ReconReport,
        *,
        session_id: str = "",
        time: datetime | None = None,
    ) -> SessionEvent:
        """Add a reconnaissance report from another service to a session.

        With `session_id` the event goes to that session (which must belong to the same
        source); without, to the source's open session or a new one.
        """
        source = parse_source_address(source_address)
        detail = require_text(report.detail, "report.detail", evidence=True)
        reporter = require_text(report.reporting_service, "report.reporting_service", limit=256)
        method = require_text(report.method, "report.method", limit=512)
        subject = require_text(report.claimed_subject, "report.claimed_subject", limit=512, evidence=True)
        report = replace(report, detail=detail, reporting_service=reporter, method=method, claimed_subject=subject)
        when = _utc(time, "time") if time is not None else self._clock()
        if session_id:
            session = self._get(session_id)
            if session.source_address != source:
                raise InvalidArgument("session_id", "belongs to a different source_address")
        else:
            session = self._open_session(source, when)
        stage = report.kind.stage
        summary = f"{report.kind.name.lower().replace('_', ' ')} reported by {reporter or 'a service'}"
        summary += f" on {method}" if method else ""
        summary += f": {detail[:200]}" if detail else ""
        event = SessionEvent(self._new_id(), session.session_id, when, stage, summary, recon=report)
        self._append(session, event)
        return event

    def restore(self, sessions: Iterable[Session], events: Iterable[SessionEvent]) -> None:
        """Load persisted sessions and events (the store layer rebuilding the book at start)."""
        for session in sessions:
            self._add(session)
        for event in events:
            timeline = self._timelines.get(event.session_id)
            if timeline is not None:
                bisect.insort(timeline, event, key=lambda e: e.time)

    # --- queries ---

    def get(self, session_id: str) -> Session:
        """A copy of one session; NotFound if there is none with this id."""
        session = self._get(session_id)
        return replace(session, decoy_ids=list(session.decoy_ids), labels=dict(session.labels))

    def events(self, session_id: str) -> tuple[SessionEvent, ...]:
        """A session's whole stored timeline, oldest first."""
        self._get(session_id)
        return tuple(self._timelines[session_id])

    def timeline(self, session_id: str, page_size: int = 0, page_token: str = "") -> tuple[list[SessionEvent], str]:
        """One page of a session's timeline, oldest first, and the next page's token."""
        self._get(session_id)
        page = page_request(page_size, page_token, {"session_id": session_id})
        timeline = self._timelines[session_id]
        start = offset_cursor(page.cursor, len(timeline))
        events = timeline[start : start + page.size]
        end = start + len(events)
        return events, page.next_token({"offset": end} if end < len(timeline) else None)

    def list_sessions(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        source_address: str = "",
        min_stage: ReconStage | None = None,
    ) -> tuple[list[Session], str]:
        """One page of sessions, most recently active first, and the next page's token."""
        source = parse_source_address(source_address) if source_address.strip() else ""
        filters = {"source_address": source, "min_stage": int(min_stage or 0)}
        page = page_request(page_size, page_token, filters)
        candidates = list(self._sessions.values())
        if source:
            candidates = [self._sessions[i] for i in self._by_source.get(source, [])]
        chosen = [s for s in candidates if min_stage is None or (s.stage is not None and s.stage >= min_stage)]
        chosen.sort(key=lambda s: (s.last_event_time, s.session_id), reverse=True)
        if page.cursor:
            after = time_cursor(page.cursor)
            chosen = [s for s in chosen if (s.last_event_time, s.session_id) < after]
        result = [self.get(s.session_id) for s in chosen[: page.size]]
        more = len(chosen) > page.size
        cursor = {"t": result[-1].last_event_time.isoformat(), "id": result[-1].session_id} if more else None
        return result, page.next_token(cursor)

    def all_sessions(self) -> tuple[Session, ...]:
        """Every session (copies), oldest first, for attribution."""
        ordered = sorted(self._sessions.values(), key=lambda s: (s.create_time, s.session_id))
        return tuple(self.get(s.session_id) for s in ordered)

    # --- internals ---

    def _get(self, session_id: str) -> Session:
        if not session_id.strip():
            raise InvalidArgument("session_id", "must not be empty")
        try:
            return self._sessions[session_id]
        except KeyError:
            raise NotFound("session", session_id[:64]) from None

    def _add(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self._timelines.setdefault(session.session_id, [])
        self._by_source.setdefault(session.source_address, []).append(session.session_id)

    def _open_session(self, source_address: str, when: datetime) -> Session:
        source = parse_source_address(source_address)
        for session_id in reversed(self._by_source.get(source, [])):
            session = self._sessions[session_id]
            if (
                session.create_time - self.policy.idle_timeout
                <= when
                <= (session.last_event_time + self.policy.idle_timeout)
            ):
                return session
        session = Session(self._new_id(), source, when, when)
        self._add(session)
        return session

    def _append(self, session: Session, event: SessionEvent) -> None:
        session.event_count += 1
        session.stage = event.stage if session.stage is None else max(session.stage, event.stage)
        session.last_event_time = max(session.last_event_time, event.time)
        session.create_time = min(session.create_time, event.time)
        timeline = self._timelines[session.session_id]
        if len(timeline) < self.policy.max_events_per_session:
            bisect.insort(timeline, event, key=lambda e: e.time)

    def _check_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if len(labels) > self.policy.max_labels:
            raise InvalidArgument("labels", f"at most {self.policy.max_labels} labels")
        checked: dict[str, str] = {}
        for key, value in labels.items():
            name = require_text(key, "labels", required=True, limit=63)
            checked[name] = require_text(value, f"labels[{name}]", limit=256)
        return checked


def _utc(value: datetime, field_name: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidArgument(field_name, "must carry a time zone")
    return value.astimezone(UTC)


def _interaction_summary(interaction: Interaction) -> str:
    parts = [
        f"{interaction.protocol.label} {interaction.stage.name.lower().replace('_', ' ')} on {interaction.decoy_id}",
        f"{interaction.bytes_received} bytes from port {interaction.source_port}",
    ]
    if interaction.credentials:
        users = sorted({c.username for c in interaction.credentials if c.username})
        parts.append(
            f"{len(interaction.credentials)} credentials tried" + (f" ({', '.join(users[:5])})" if users else "")
        )
    if interaction.client_banner:
        parts.append(f"client {interaction.client_banner[:80]!r}")
    if interaction.indicators:
        parts.append("indicators " + ", ".join(interaction.indicators))
    return "; ".join(parts)
