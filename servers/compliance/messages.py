"""Conversions between the compliance domain and the contract's messages."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from servers.compliance.alerts.domain import Alert
from servers.compliance.alerts.store import Attempt
from servers.compliance.assessments.domain import CHECKS, FrameworkScore, Score
from servers.compliance.assessments.store import StoredAssessment, StoredResult
from servers.compliance.catalog.domain import Control, FrameworkEntry
from servers.compliance.domain import EvidenceKind, Framework
from servers.compliance.evidence.domain import EvidenceRecord
from servers.compliance.evidence.signing import ChainHead
from servers.compliance.remediation.domain import Remediation
from servers.mesh.errors import InvalidArgument
from shieldx.compliance.v1 import compliance_pb2 as pb


def timestamp(moment: datetime | None) -> Timestamp | None:
    """A Timestamp, or None for None."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def from_timestamp(message: Timestamp, field: str) -> datetime:
    """An aware datetime; InvalidArgument naming `field` if out of range."""
    if not 0 <= message.nanos < 1_000_000_000 or not -62135596800 <= message.seconds <= 253402300799:
        raise InvalidArgument(field, "is not a valid timestamp")
    return message.ToDatetime(UTC)


def framework_filter(value: int, field: str = "framework") -> Framework | None:
    """A framework filter (unspecified: None); InvalidArgument for an unknown number."""
    if value == 0:
        return None
    try:
        return Framework(value)
    except ValueError:
        raise InvalidArgument(field, f"unknown framework {value}") from None


def kind_filter(value: int) -> EvidenceKind | None:
    """An evidence kind filter."""
    if value == 0:
        return None
    try:
        return EvidenceKind(value)
    except ValueError:
        raise InvalidArgument("kind", f"unknown evidence kind {value}") from None


def framework_info(entry: FrameworkEntry) -> pb.FrameworkInfo:
    """ListFrameworks entry."""
    return pb.FrameworkInfo(
        framework=pb.Framework.ValueType(entry.framework),
        name=entry.name,
        version=entry.version,
        description=entry.description,
        control_count=len(entry.controls),
        automated_control_count=sum(1 for c in entry.controls if c.automated),
        families=entry.families,
    )


def control(item: Control, latest: StoredResult | None) -> pb.Control:
    """A control with its latest result."""
    message = pb.Control(
        control_id=item.control_id,
        framework=pb.Framework.ValueType(item.framework),
        family=item.family,
        title=item.title,
        description=f"{item.description} Remediation: {item.remediation}",
        severity=pb.Severity.ValueType(item.severity),
        automated=item.automated,
        evidence_kinds=sorted({pb.EvidenceKind.ValueType(k) for k in _kinds(item)}),
    )
    if latest is not None:
        message.latest_result.CopyFrom(result(latest))
    return message


def _kinds(item: Control) -> set[int]:
    return {int(CHECKS[name].kind) for name in item.checks}


def result(stored: StoredResult) -> pb.ControlResult:
    """One control result."""
    return pb.ControlResult(
        control_id=stored.control_id,
        framework=pb.Framework.ValueType(stored.framework),
        status=pb.ControlStatus.ValueType(stored.status),
        summary=stored.summary,
        evidence_ids=list(stored.evidence_ids),
        assessment_id=stored.assessment_id,
        evaluate_time=timestamp(stored.evaluate_time),
        remediation_id=stored.remediation_id,
    )


def score(value: Score) -> pb.Score:
    """A Score."""
    return pb.Score(
        score=value.score,
        passing_controls=value.passing,
        failing_controls=value.failing,
        error_controls=value.error,
        not_assessed_controls=value.not_assessed,
    )


def framework_score(value: FrameworkScore, assessment_id: str, when: datetime) -> pb.FrameworkScore:
    """A FrameworkScore."""
    return pb.FrameworkScore(
        framework=pb.Framework.ValueType(value.framework),
        score=score(value.overall),
        families=[pb.FamilyScore(family=f, score=score(s)) for f, s in value.families.items()],
        assessment_id=assessment_id,
        assess_time=timestamp(when),
    )


def assessment(stored: StoredAssessment, *, with_results: bool = True) -> pb.Assessment:
    """An Assessment."""
    return pb.Assessment(
        assessment_id=stored.assessment_id,
        frameworks=[pb.Framework.ValueType(f) for f in stored.frameworks],
        state=pb.AssessmentState.ValueType(stored.state),
        start_time=timestamp(stored.start_time),
        finish_time=timestamp(stored.finish_time),
        scores=[framework_score(s, stored.assessment_id, when) for s, when in stored.scores],
        results=[result(r) for r in stored.results] if with_results else [],
        evidence_count=stored.evidence_count,
        error=stored.error,
        started_by=stored.started_by,
    )


def evidence(record: EvidenceRecord) -> pb.Evidence:
    """An Evidence."""
    details = Struct()
    details.update(dict(record.observation.details))
    message = pb.Evidence(
        evidence_id=record.evidence_id,
        kind=pb.EvidenceKind.ValueType(record.kind),
        assessment_id=record.assessment_id,
        target=record.observation.target,
        passed=record.observation.passed,
        summary=record.observation.summary,
        details=details,
        collect_time=timestamp(record.observation.collect_time),
        sha256=record.sha256,
        sequence=record.sequence,
        previous_chain_sha256=record.previous_chain_sha256,
        chain_sha256=record.chain_sha256,
    )
    message.probe_duration.FromTimedelta(record.observation.probe_duration)
    return message


def chain_head(head: ChainHead | None) -> pb.EvidenceChainHead | None:
    """An EvidenceChainHead."""
    if head is None:
        return None
    return pb.EvidenceChainHead(
        sequence=head.sequence,
        chain_sha256=head.chain_sha256,
        sign_time=timestamp(head.sign_time),
        signature=head.signature,
        key_id=head.key_id,
        public_key=head.public_key,
    )


def alert(item: Alert) -> pb.Alert:
    """An Alert."""
    return pb.Alert(
        alert_id=item.alert_id,
        source=item.source,
        category=item.category,
        severity=pb.Severity.ValueType(item.severity),
        state=pb.AlertState.ValueType(item.state),
        title=item.title,
        description=item.description,
        subject=item.subject,
        source_address=item.source_address,
        attributes=dict(item.attributes),
        count=item.count,
        first_seen_time=timestamp(item.first_seen),
        last_seen_time=timestamp(item.last_seen),
        dedup_key=item.dedup_key,
        acknowledge_time=timestamp(item.acknowledge_time),
        acknowledged_by=item.acknowledged_by,
        acknowledgement_note=item.acknowledgement_note,
        escalation_level=item.escalation_level,
        notification_deadline=timestamp(item.notification_deadline),
        authority_notify_time=timestamp(item.authority_notify_time),
        authority_reference=item.authority_reference,
        escalate_time=timestamp(item.escalate_time),
    )


def remediation(task: Remediation) -> pb.Remediation:
    """A Remediation."""
    return pb.Remediation(
        remediation_id=task.remediation_id,
        control_id=task.control_id,
        framework=pb.Framework.ValueType(task.framework),
        state=pb.RemediationState.ValueType(task.state),
        title=task.title,
        detail=task.detail,
        opened_by_assessment_id=task.opened_by_assessment_id,
        last_assessment_id=task.last_assessment_id,
        assignee=task.assignee,
        due_time=timestamp(task.due_time),
        notes=[
            pb.RemediationNote(author=n.author, text=n.text, create_time=timestamp(n.create_time)) for n in task.notes
        ],
        create_time=timestamp(task.create_time),
        update_time=timestamp(task.update_time),
        resolve_time=timestamp(task.resolve_time),
        severity=pb.Severity.ValueType(task.severity),
    )


def attempt(item: Attempt) -> pb.NotificationAttempt:
    """A NotificationAttempt."""
    return pb.NotificationAttempt(
        attempt_id=item.attempt_id,
        alert_id=item.alert_id,
        channel=item.channel,
        reason=item.reason,
        attempt=item.attempt,
        delivered=item.delivered,
        status_code=item.status_code,
        error=item.error,
        attempt_time=timestamp(item.attempt_time),
    )
