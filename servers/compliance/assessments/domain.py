"""Evaluating controls on shared evidence, and the severity-weighted scores the contract defines.

A check reads one kind of evidence and judges each record (True met, False not met, None not
about this check); a control rests on one or more checks. Any record judged not met makes the
control FAILING; otherwise a record whose probe could not observe (or no evidence at all) makes
it ERROR; otherwise it is PASSING. Manual controls are NOT_ASSESSED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from servers.compliance.catalog.domain import Control
from servers.compliance.domain import ControlStatus, EvidenceKind, Framework
from servers.compliance.evidence.domain import EvidenceRecord, Observation

Judge = Callable[[Observation], bool | None]


def _passed(seen: Observation) -> bool | None:
    return seen.passed


def _detail(name: str) -> Judge:
    def judge(seen: Observation) -> bool | None:
        value = seen.details.get(name)
        return None if value is None else bool(value)

    return judge


def _protection(name: str) -> Judge:
    def judge(seen: Observation) -> bool | None:
        protections = seen.details.get("protections") or {}
        value = protections.get(name) if isinstance(protections, Mapping) else None
        return None if value is None else bool(value)

    return judge


@dataclass(frozen=True)
class Check:
    """One evaluation over one kind of evidence, shared by every control that names it."""

    kind: EvidenceKind
    judge: Judge
    description: str


CHECKS: dict[str, Check] = {
    "service_health": Check(EvidenceKind.HEALTH, _passed, "every service and registered instance is SERVING"),
    "tls_endpoints": Check(EvidenceKind.TLS, _passed, "every endpoint serves TLS 1.2+ with a valid certificate"),
    "auth_enforced": Check(EvidenceKind.AUTH_ENFORCED, _passed, "calls without a token or scope are refused"),
    "admin_mfa": Check(EvidenceKind.MFA, _passed, "person clients have MFA; secrets and lifetimes in policy"),
    "signing_key_age": Check(EvidenceKind.SIGNING_KEY_AGE, _passed, "the signing key is younger than its limit"),
    "audit_chain": Check(EvidenceKind.AUDIT_CHAIN, _passed, "the credits audit chain verifies, its head is recent"),
    "posture_auth": Check(EvidenceKind.POSTURE, _detail("auth_enabled"), "every server has auth on"),
    "posture_rate_limit": Check(EvidenceKind.POSTURE, _detail("rate_limit_enabled"), "every server rate limits"),
    "posture_logging": Check(
        EvidenceKind.POSTURE, _detail("logs_carry_trace_ids"), "every server logs JSON with trace ids"
    ),
    "payment_data_encrypted": Check(
        EvidenceKind.POSTURE, _protection("payment_references_encrypted"), "payment references encrypted at rest"
    ),
    "retention": Check(EvidenceKind.RETENTION, _passed, "records are kept at least as long as required"),
    "replication": Check(EvidenceKind.REPLICATION, _passed, "every shard has a healthy replica; failovers met RTO"),
    "alert_response": Check(EvidenceKind.ALERT_RESPONSE, _passed, "high and critical alerts acknowledged in time"),
    "change_management": Check(EvidenceKind.CHANGE_MANAGEMENT, _passed, "deployments went through analysis"),
    "breach_notification": Check(
        EvidenceKind.BREACH_NOTIFICATION, _passed, "no breach past its 72 h deadline unnotified"
    ),
}


def kinds_for(check_names: Iterable[str]) -> set[EvidenceKind]:
    """The evidence kinds these checks need (each collected once per assessment)."""
    return {CHECKS[name].kind for name in check_names}


@dataclass(frozen=True)
class ControlOutcome:
    """A control's evaluation in one assessment."""

    control: Control
    status: ControlStatus
    summary: str
    evidence_ids: tuple[str, ...]
    evaluate_time: datetime


def evaluate(control: Control, evidence: Sequence[EvidenceRecord], now: datetime) -> ControlOutcome:
    """Evaluate one control on the assessment's evidence."""
    if not control.automated:
        return ControlOutcome(control, ControlStatus.NOT_ASSESSED, "manual control: not evaluated", (), now)
    used: list[str] = []
    failing: list[str] = []
    errors: list[str] = []
    for name in control.checks:
        check = CHECKS[name]
        judged = 0
        for record in evidence:
            if record.kind is not check.kind:
                continue
            seen = record.observation
            if seen.error:
                used.append(record.evidence_id)
                errors.append(f"{name}: {seen.target}: {seen.error}")
                continue
            verdict = check.judge(seen)
            if verdict is None:
                continue
            judged += 1
            used.append(record.evidence_id)
            if not verdict:
                failing.append(f"{name}: {seen.target}: {seen.summary}")
        if judged == 0 and not any(e.startswith(f"{name}:") for e in errors):
            errors.append(f"{name}: no evidence collected")
    ids = tuple(dict.fromkeys(used))
    if failing:
        return ControlOutcome(control, ControlStatus.FAILING, _summary("not met", failing), ids, now)
    if errors:
        return ControlOutcome(control, ControlStatus.ERROR, _summary("evidence missing", errors), ids, now)
    return ControlOutcome(
        control, ControlStatus.PASSING, f"met: {'; '.join(CHECKS[n].description for n in control.checks)}", ids, now
    )


def _summary(label: str, items: list[str]) -> str:
    shown = items[:5]
    more = f" (and {len(items) - len(shown)} more)" if len(items) > len(shown) else ""
    return f"{label}: " + " | ".join(shown) + more


@dataclass(frozen=True)
class Score:
    """The contract's Score: weighted share of assessed controls passing, and the counts."""

    score: float
    passing: int
    failing: int
    error: int
    not_assessed: int


def score(outcomes: Iterable[tuple[ControlStatus, int]]) -> Score:
    """Score `(status, weight)` pairs: weight of PASSING over that of PASSING, FAILING and ERROR; 1 if none."""
    counts = dict.fromkeys(ControlStatus, 0)
    passed = assessed = 0
    for status, weight in outcomes:
        counts[status] += 1
        if status is ControlStatus.NOT_ASSESSED:
            continue
        assessed += weight
        passed += weight if status is ControlStatus.PASSING else 0
    return Score(
        passed / assessed if assessed else 1.0,
        counts[ControlStatus.PASSING],
        counts[ControlStatus.FAILING],
        counts[ControlStatus.ERROR],
        counts[ControlStatus.NOT_ASSESSED],
    )


@dataclass(frozen=True)
class FrameworkScore:
    """A framework's score overall and per family."""

    framework: Framework
    overall: Score
    families: dict[str, Score]


def framework_scores(outcomes: Sequence[ControlOutcome]) -> list[FrameworkScore]:
    """Scores of every framework present in `outcomes`, in enum order, families in catalog order."""
    result = []
    for framework in sorted({o.control.framework for o in outcomes}):
        mine = [o for o in outcomes if o.control.framework is framework]
        families = dict.fromkeys(o.control.family for o in mine)
        result.append(
            FrameworkScore(
                framework,
                score((o.status, o.control.severity.weight) for o in mine),
                {
                    family: score((o.status, o.control.severity.weight) for o in mine if o.control.family == family)
                    for family in families
                },
            )
        )
    return result
