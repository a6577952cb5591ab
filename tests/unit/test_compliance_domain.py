"""Compliance rules without a server: the catalog, scores against hand-computed weights, evaluation,
the evidence chain, remediation due times, escalation and the GDPR Art. 33 clock on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servers.compliance.alerts.domain import (
    AlertReport,
    ResponsePolicy,
    acknowledge,
    breach_overdue,
    escalate,
    open_alert,
    record_notification,
    validate_report,
)
from servers.compliance.assessments.domain import CHECKS, ControlOutcome, evaluate, framework_scores, score
from servers.compliance.catalog.domain import load_catalog
from servers.compliance.domain import ControlStatus, EvidenceKind, Framework, Severity
from servers.compliance.evidence.domain import GENESIS, Observation, StoredLink, chain, first_mismatch, rfc3339
from servers.compliance.evidence.signing import HeadSigner, verify_head
from servers.compliance.remediation.domain import (
    SYSTEM_AUTHOR,
    Change,
    DuePolicy,
    RemediationState,
    apply_change,
    plan,
)
from servers.mesh.errors import FailedPrecondition, InvalidArgument

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CATALOG = load_catalog(set(CHECKS))


def test_the_catalog_has_every_control_the_issue_lists_and_resolves_old_ids() -> None:
    wanted = {
        Framework.SOC2: "CC6.1 CC6.2 CC6.3 CC6.6 CC6.7 CC6.8 CC7.1 CC7.2 CC7.3 CC7.4 CC8.1 A1.2",
        Framework.ISO27001: "A.5.15 A.5.17 A.5.24 A.5.25 A.5.26 A.8.2 A.8.5 A.8.13 A.8.15 A.8.16 A.8.20 A.8.24 A.8.32",
        Framework.GDPR: "ART5.1E ART5.1F ART25 ART30 ART32 ART33",
        Framework.PCI_DSS: "3.5.1 3.6.1 3.7.1 4.2.1 7.2.1 8.3.1 8.4.2 10.2.1 10.3.2 10.5.1 12.10.1",
    }
    for framework, refs in wanted.items():
        assert {c.reference for c in CATALOG.of([framework])} == set(refs.split())
    assert CATALOG.resolve("ISO27001-A.9.1.2").control_id == "ISO27001-A.5.15"
    assert CATALOG.resolve("ISO27001-A.10.1.1").control_id == "ISO27001-A.8.24"
    assert CATALOG.resolve("ISO27001-A.12.4.1").control_id == "ISO27001-A.8.15"
    assert CATALOG.resolve("PCI-DSS-3.4").control_id == "PCI-DSS-3.5.1"
    assert CATALOG.resolve("PCI-DSS-10.2").control_id == "PCI-DSS-10.2.1"
    checks_feeding_many = [name for name in CHECKS if sum(name in c.checks for c in CATALOG.controls.values()) > 3]
    assert "tls_endpoints" in checks_feeding_many and "auth_enforced" in checks_feeding_many


def test_scores_match_the_weights_computed_by_hand() -> None:
    # PASSING CRITICAL (4) + PASSING LOW (1) over PASSING 4+1, FAILING HIGH 3, ERROR MEDIUM 2: 5 / 10.
    # The NOT_ASSESSED HIGH control counts nowhere.
    got = score(
        [
            (ControlStatus.PASSING, Severity.CRITICAL.weight),
            (ControlStatus.PASSING, Severity.LOW.weight),
            (ControlStatus.FAILING, Severity.HIGH.weight),
            (ControlStatus.ERROR, Severity.MEDIUM.weight),
            (ControlStatus.NOT_ASSESSED, Severity.HIGH.weight),
        ]
    )
    assert got.score == pytest.approx(5 / 10)
    assert (got.passing, got.failing, got.error, got.not_assessed) == (2, 1, 1, 1)
    assert score([(ControlStatus.NOT_ASSESSED, 3)]).score == 1.0, "nothing assessed scores 1"


def test_framework_and_family_scores_from_outcomes() -> None:
    gdpr = {c.reference: c for c in CATALOG.of([Framework.GDPR])}
    statuses = {
        "ART5.1E": ControlStatus.PASSING,  # MEDIUM 2, family Art. 5
        "ART5.1F": ControlStatus.FAILING,  # HIGH 3, family Art. 5
        "ART25": ControlStatus.PASSING,  # MEDIUM 2
        "ART30": ControlStatus.NOT_ASSESSED,  # manual
        "ART32": ControlStatus.ERROR,  # CRITICAL 4
        "ART33": ControlStatus.PASSING,  # CRITICAL 4
    }
    outcomes = [ControlOutcome(gdpr[ref], status, "", (), T0) for ref, status in statuses.items()]
    (result,) = framework_scores(outcomes)
    assert result.overall.score == pytest.approx((2 + 2 + 4) / (2 + 3 + 2 + 4 + 4))
    assert result.families["Art. 5 Principles"].score == pytest.approx(2 / 5)
    assert result.families["Art. 32 Security of processing"].score == 0.0


def observation(kind: EvidenceKind, target: str, passed: bool, **details: object) -> Observation:
    return Observation(kind, target, passed, "seen", details, T0)


def test_a_control_fails_on_failing_evidence_errors_on_missing_and_names_the_target() -> None:
    control = CATALOG.resolve("SOC2-CC6.3")  # auth_enforced
    records = chain(
        [
            ("e1", observation(EvidenceKind.AUTH_ENFORCED, "credits@1", False)),
            ("e2", observation(EvidenceKind.AUTH_ENFORCED, "tokens@2", True)),
        ],
        "a1",
        0,
        GENESIS,
    )
    failing = evaluate(control, records, T0)
    assert failing.status is ControlStatus.FAILING and "credits@1" in failing.summary
    assert set(failing.evidence_ids) == {"e1", "e2"}
    unreachable = chain(
        [("e3", observation(EvidenceKind.AUTH_ENFORCED, "credits@1", False, error="refused"))], "a", 0, GENESIS
    )
    assert evaluate(control, unreachable, T0).status is ControlStatus.ERROR
    assert evaluate(control, [], T0).status is ControlStatus.ERROR
    manual = evaluate(CATALOG.resolve("GDPR-ART30"), records, T0)
    assert manual.status is ControlStatus.NOT_ASSESSED


def test_the_chain_names_the_first_changed_record_and_the_signed_head_verifies_offline() -> None:
    records = chain([(f"e{i}", observation(EvidenceKind.HEALTH, f"svc{i}", True)) for i in range(5)], "a", 0, GENESIS)
    links = [
        StoredLink(
            r.sequence,
            r.evidence_id,
            r.kind,
            r.observation.target,
            r.observation.passed,
            r.observation.details,
            rfc3339(r.observation.collect_time),
            r.sha256,
            r.previous_chain_sha256,
            r.chain_sha256,
        )
        for r in records
    ]
    assert first_mismatch(links, 0, GENESIS) is None
    tampered = list(links)
    tampered[2] = StoredLink(**{**links[2].__dict__, "passed": False})
    problem = first_mismatch(tampered, 0, GENESIS)
    assert problem is not None and problem.evidence_id == "e2" and problem.sequence == 3
    assert first_mismatch([links[0], links[2]], 0, GENESIS).evidence_id == "e2", "a removed record is named"  # type: ignore[union-attr]

    import nacl.signing

    signer = HeadSigner(nacl.signing.SigningKey.generate())
    head = signer.sign(records[-1].sequence, records[-1].chain_sha256, T0)
    assert verify_head(head.sequence, head.chain_sha256, rfc3339(T0), head.signature, signer.public_key)
    assert not verify_head(head.sequence, GENESIS, rfc3339(T0), head.signature, signer.public_key)


def test_remediation_opens_once_is_due_by_severity_resolves_and_reopens() -> None:
    control = CATALOG.resolve("PCI-DSS-4.2.1")  # CRITICAL: due in 1 day
    policy = DuePolicy()
    opened = plan(control, ControlStatus.FAILING, "plaintext", None, "a1", policy, T0)
    assert opened.created and opened.write is not None
    task = opened.write
    assert task.due_time == T0 + timedelta(days=1)
    assert not task.overdue(T0 + timedelta(hours=23)) and task.overdue(T0 + timedelta(days=1, seconds=1))
    again = plan(control, ControlStatus.FAILING, "plaintext", task, "a2", policy, T0 + timedelta(hours=1))
    assert not again.created and again.write is not None and again.write.remediation_id == task.remediation_id
    resolved = plan(control, ControlStatus.PASSING, "tls", task, "a3", policy, T0 + timedelta(hours=2)).write
    assert resolved is not None and resolved.state is RemediationState.RESOLVED
    assert resolved.notes[-1].author == SYSTEM_AUTHOR and not resolved.overdue(T0 + timedelta(days=9))

    by_hand = apply_change(task, Change(state=RemediationState.RESOLVED, note="fixed it"), "alice", T0)
    reopened = plan(control, ControlStatus.FAILING, "still plaintext", by_hand, "a4", policy, T0).write
    assert reopened is not None and reopened.state is RemediationState.OPEN
    accepted = apply_change(task, Change(state=RemediationState.RISK_ACCEPTED, note="accepted"), "alice", T0)
    kept = plan(control, ControlStatus.FAILING, "still", accepted, "a5", policy, T0).write
    assert kept is not None and kept.state is RemediationState.RISK_ACCEPTED, (
        "risk accepted keeps failing, opens nothing"
    )
    with pytest.raises(InvalidArgument) as caught:
        apply_change(task, Change(state=RemediationState.RESOLVED), "alice", T0)
    assert caught.value.metadata["field"] == "note"


def breach(at: datetime) -> AlertReport:
    return AlertReport(
        source="shieldx.deception.v1.DeceptionService",
        category="honeytoken_used",
        severity=Severity.HIGH,
        title="Honeytoken used",
        occur_time=at,
    )


def test_the_art_33_clock_escalates_at_48_and_70_hours_and_stops_when_notified() -> None:
    policy = ResponsePolicy({Severity.HIGH: timedelta(days=30)})  # response escalation out of the way
    alert = open_alert(validate_report(breach(T0)), T0)
    assert alert.notification_deadline == T0 + timedelta(hours=72)
    assert escalate(alert, policy, T0 + timedelta(hours=47)) is None
    first = escalate(alert, policy, T0 + timedelta(hours=48))
    assert first is not None and first.reason == "breach_deadline_48h" and first.alert.escalation_level == 1
    assert escalate(first.alert, policy, T0 + timedelta(hours=60)) is None
    second = escalate(first.alert, policy, T0 + timedelta(hours=70))
    assert second is not None and second.reason == "breach_deadline_70h" and second.alert.escalation_level == 2
    assert not breach_overdue(second.alert, T0 + timedelta(hours=72))
    assert breach_overdue(second.alert, T0 + timedelta(hours=72, seconds=1))
    acknowledged = acknowledge(second.alert, "bob", "looking", T0 + timedelta(hours=71))
    assert breach_overdue(acknowledged, T0 + timedelta(hours=73)), "acknowledging does not stop the clock"
    notified = record_notification(acknowledged, "CNIL", "ref-1", T0 + timedelta(hours=71))
    assert not breach_overdue(notified, T0 + timedelta(hours=100))
    assert escalate(notified, policy, T0 + timedelta(hours=100)) is None


def test_unacknowledged_high_alerts_escalate_after_each_response_time() -> None:
    policy = ResponsePolicy({Severity.HIGH: timedelta(minutes=10), Severity.CRITICAL: timedelta(minutes=5)})
    report = AlertReport(source="s", category="attacker_session", severity=Severity.HIGH, title="t", occur_time=T0)
    alert = open_alert(validate_report(report), T0)
    assert alert.notification_deadline is None
    assert escalate(alert, policy, T0 + timedelta(minutes=9)) is None
    once = escalate(alert, policy, T0 + timedelta(minutes=10))
    assert once is not None and once.reason == "escalated" and once.alert.escalation_level == 1
    assert escalate(once.alert, policy, T0 + timedelta(minutes=15)) is None
    twice = escalate(once.alert, policy, T0 + timedelta(minutes=20))
    assert twice is not None and twice.alert.escalation_level == 2
    assert escalate(acknowledge(alert, "bob", "", T0), policy, T0 + timedelta(hours=5)) is None
    low = open_alert(validate_report(AlertReport("s", "c", Severity.LOW, "t", occur_time=T0)), T0)
    assert escalate(low, policy, T0 + timedelta(days=5)) is None, "low alerts never escalate"
    with pytest.raises(FailedPrecondition):
        record_notification(alert, "CNIL", "", T0)
