"""Attacker sessions (timeline, LogRecon, idle timeout, paging) and per-source alert deduplication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from servers.deception.alerts import AlertBook, DeduplicationPolicy
from servers.deception.domain import (
    AlertKind,
    Interaction,
    Protocol,
    ReconKind,
    ReconReport,
    ReconStage,
    Severity,
    parse_source_address,
    source_network,
)
from servers.deception.sessions import SessionBook, SessionPolicy
from servers.mesh.errors import InvalidArgument, NotFound

T0 = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def interaction(source: str, at: datetime, stage: ReconStage = ReconStage.SCAN, decoy: str = "ssh-1") -> Interaction:
    return Interaction(
        interaction_id=f"i-{at.timestamp()}-{source}",
        decoy_id=decoy,
        protocol=Protocol.SSH,
        source_address=source,
        source_port=40000,
        start_time=at,
        end_time=at + timedelta(seconds=1),
        bytes_received=0 if stage is ReconStage.SCAN else 30,
        received_sample=b"",
        stage=stage,
    )


def book(clock: Clock | None = None) -> SessionBook:
    ids = count(1)
    return SessionBook(
        SessionPolicy(idle_timeout=timedelta(minutes=30)), clock=clock or Clock(), new_id=lambda: f"s{next(ids)}"
    )


def test_events_of_a_source_share_a_session_until_it_goes_idle() -> None:
    sessions = book()
    first = sessions.record_interaction(interaction("198.51.100.7", T0))
    second = sessions.record_interaction(
        interaction("198.51.100.7", T0 + timedelta(minutes=20), ReconStage.BANNER_GRAB)
    )
    later = sessions.record_interaction(interaction("198.51.100.7", T0 + timedelta(minutes=51)))
    other = sessions.record_interaction(interaction("198.51.100.8", T0 + timedelta(minutes=1)))

    assert first.session_id == second.session_id != later.session_id
    assert other.session_id not in (first.session_id, later.session_id)
    session = sessions.get(first.session_id)
    assert session.event_count == 2 and session.stage is ReconStage.BANNER_GRAB
    assert session.last_event_time == T0 + timedelta(minutes=20)


def test_the_timeline_is_in_time_order_even_when_events_arrive_late() -> None:
    sessions = book()
    late = sessions.record_interaction(interaction("203.0.113.5", T0 + timedelta(minutes=5)))
    early = sessions.record_interaction(interaction("203.0.113.5", T0 + timedelta(minutes=1)))

    timeline = sessions.events(late.session_id)
    assert [e.event_id for e in timeline] == [early.event_id, late.event_id]
    assert sessions.get(late.session_id).create_time == T0 + timedelta(minutes=1)


def test_log_recon_adds_a_service_report_to_the_sources_open_session() -> None:
    clock = Clock()
    sessions = book(clock)
    decoy_event = sessions.record_interaction(interaction("::ffff:192.0.2.44", T0, ReconStage.BANNER_GRAB))
    clock.now = T0 + timedelta(minutes=3)
    report = ReconReport(
        ReconKind.REVOKED_TOKEN,
        "shieldx.tokens.v1.TokenService",
        "/shieldx.credits.v1.CreditsService/Consume",
        "token jti=7f3 was revoked",
    )

    event = sessions.log_recon("192.0.2.44", report)

    assert event.session_id == decoy_event.session_id, "IPv4-mapped and plain IPv4 are one source"
    assert event.stage is ReconStage.LOGIN_ATTEMPT and event.time == clock.now
    assert "revoked token" in event.summary and "CreditsService/Consume" in event.summary
    assert sessions.get(event.session_id).stage is ReconStage.LOGIN_ATTEMPT


def test_log_recon_into_a_named_session_must_match_its_source() -> None:
    sessions = book()
    created = sessions.create_session("192.0.2.10", {"ticket": "SEC-4411"})
    assert created.labels == {"ticket": "SEC-4411"} and created.stage is None

    event = sessions.log_recon("192.0.2.10", ReconReport(ReconKind.ENUMERATION), session_id=created.session_id)
    assert event.session_id == created.session_id and event.stage is ReconStage.BANNER_GRAB
    with pytest.raises(InvalidArgument) as wrong:
        sessions.log_recon("192.0.2.11", ReconReport(ReconKind.ENUMERATION), session_id=created.session_id)
    assert wrong.value.metadata["field"] == "session_id"
    with pytest.raises(NotFound):
        sessions.log_recon("192.0.2.10", ReconReport(ReconKind.ENUMERATION), session_id="nope")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.create_session("not-an-ip"), "source_address"),
        (lambda s: s.create_session(""), "source_address"),
        (lambda s: s.create_session("192.0.2.1", {"": "x"}), "labels"),
        (lambda s: s.create_session("192.0.2.1", {f"k{i}": "v" for i in range(33)}), "labels"),
        (lambda s: s.log_recon("192.0.2.1", ReconReport(ReconKind.OTHER, detail="x" * 5000)), "report.detail"),
        (lambda s: s.log_recon("192.0.2.1", ReconReport(ReconKind.OTHER), time=datetime(2024, 1, 1)), "time"),
        (lambda s: s.get(""), "session_id"),
        (lambda s: s.list_sessions(page_size=-1), "page_size"),
        (lambda s: s.list_sessions(page_token="garbage!"), "page_token"),
    ],
)
def test_bad_requests_name_the_field(call: object, field: str) -> None:
    sessions = book()
    with pytest.raises(InvalidArgument) as error:
        call(sessions)  # type: ignore[operator]
    assert error.value.metadata["field"] == field


def test_sessions_and_timelines_page_without_gaps_or_repeats() -> None:
    sessions = book()
    for i in range(7):
        sessions.record_interaction(interaction(f"192.0.2.{i + 1}", T0 + timedelta(minutes=i)))
    for i in range(5):
        sessions.record_interaction(interaction("192.0.2.1", T0 + timedelta(seconds=10 * i)))

    seen, token = [], ""
    while True:
        page, token = sessions.list_sessions(page_size=3, page_token=token)
        seen += [s.source_address for s in page]
        if not token:
            break
    assert seen == [f"192.0.2.{i}" for i in range(7, 0, -1)]

    (session,) = [s for s in sessions.all_sessions() if s.source_address == "192.0.2.1"]
    events, token = sessions.timeline(session.session_id, page_size=4)
    rest, end = sessions.timeline(session.session_id, page_size=4, page_token=token)
    assert len(events) == 4 and len(rest) == 2 and end == ""
    with pytest.raises(InvalidArgument):
        other = next(s for s in sessions.all_sessions() if s.session_id != session.session_id)
        sessions.timeline(other.session_id, page_token=token)  # a token of another session's timeline

    reached, _ = sessions.list_sessions(min_stage=ReconStage.BANNER_GRAB)
    assert reached == []


def test_a_thousand_events_from_one_source_fold_into_one_alert_with_a_count() -> None:
    alerts = AlertBook()
    updates = [
        alerts.observe_interaction(interaction("198.51.100.9", T0 + timedelta(seconds=i), decoy=f"d{i % 3}"))
        for i in range(1000)
    ]

    assert sum(u.created for u in updates) == 1 and sum(u.notify for u in updates) == 1
    (alert,) = alerts.list_alerts()[0]
    assert alert.count == 1000 and alert.severity is Severity.LOW and alert.decoy_ids == ["d0", "d1", "d2"]
    assert alert.first_time == T0 and alert.last_time == T0 + timedelta(seconds=999)
    assert "1000 decoy connections from 198.51.100.9" in alert.summary


def test_a_more_severe_event_escalates_the_open_alert_once() -> None:
    alerts = AlertBook()
    alerts.observe_interaction(interaction("198.51.100.9", T0))
    login = alerts.observe_interaction(interaction("198.51.100.9", T0 + timedelta(seconds=5), ReconStage.LOGIN_ATTEMPT))
    again = alerts.observe_interaction(interaction("198.51.100.9", T0 + timedelta(seconds=6), ReconStage.BANNER_GRAB))

    assert login.escalated and login.notify and login.alert.severity is Severity.HIGH
    assert not again.notify and again.alert.severity is Severity.HIGH and again.alert.count == 3


def test_a_quiet_window_or_the_maximum_span_opens_a_new_alert() -> None:
    alerts = AlertBook(DeduplicationPolicy(window=timedelta(minutes=10), max_span=timedelta(hours=1)))
    first = alerts.observe_interaction(interaction("198.51.100.9", T0))
    after_quiet = alerts.observe_interaction(interaction("198.51.100.9", T0 + timedelta(minutes=11)))
    assert after_quiet.created and after_quiet.alert.alert_id != first.alert.alert_id

    slow = AlertBook(DeduplicationPolicy(window=timedelta(minutes=10), max_span=timedelta(hours=1)))
    created = [
        slow.observe_interaction(interaction("198.51.100.9", T0 + timedelta(minutes=5 * i))).created for i in range(25)
    ]
    assert created.count(True) == 2, "a slow scan over two hours is two hourly alerts"


def test_alerts_are_per_source_kind_and_honeytoken() -> None:
    alerts = AlertBook()
    alerts.observe_interaction(interaction("198.51.100.9", T0))
    alerts.observe_interaction(interaction("198.51.100.10", T0))
    alerts.observe(kind=AlertKind.RECON, source_address="198.51.100.9", time=T0, stage=ReconStage.LOGIN_ATTEMPT)
    for token in ("ht-1", "ht-2", "ht-1"):
        alerts.observe(
            kind=AlertKind.HONEYTOKEN_USED,
            source_address="198.51.100.9",
            time=T0,
            stage=ReconStage.LOGIN_ATTEMPT,
            severity=Severity.CRITICAL,
            honeytoken_id=token,
            batch_id="batch-7",
        )

    everything, _ = alerts.list_alerts()
    critical, _ = alerts.list_alerts(min_severity=Severity.CRITICAL)
    assert len(everything) == 5
    assert sorted((a.honeytoken_id, a.count) for a in critical) == [("ht-1", 2), ("ht-2", 1)]
    assert all("planted in batch batch-7" in a.summary for a in critical)
    mine, _ = alerts.list_alerts(source_address="198.51.100.10")
    assert [a.count for a in mine] == [1]
    with pytest.raises(InvalidArgument) as naive:
        alerts.observe(
            kind=AlertKind.RECON, source_address="198.51.100.9", time=datetime(2024, 1, 1), stage=ReconStage.SCAN
        )
    assert naive.value.metadata["field"] == "time"


def test_source_addresses_are_canonical_and_networks_are_slash_24_or_64() -> None:
    assert parse_source_address(" ::ffff:203.0.113.9 ") == "203.0.113.9"
    assert parse_source_address("2001:DB8::1") == "2001:db8::1"
    assert source_network("203.0.113.9") == "203.0.113.0/24"
    assert source_network("2001:db8:1:2:3::9") == "2001:db8:1:2::/64"
