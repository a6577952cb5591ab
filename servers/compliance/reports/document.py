"""The report document every format renders: scores, control results with their evidence, open
remediations, and the signed evidence-chain head the evidence ends in.

An assessment's evidence is appended in one transaction and the head signed at its end, so the
records a report lists are contiguous and their last link is the signed head: `verify_report`
checks that with nothing but the public key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servers.compliance.assessments.store import StoredAssessment
from servers.compliance.catalog.domain import Catalog
from servers.compliance.domain import EvidenceKind, Framework
from servers.compliance.evidence.domain import EvidenceRecord, link_digest, observation_digest, rfc3339
from servers.compliance.evidence.signing import ChainHead, verify_head
from servers.compliance.remediation.domain import Remediation

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ReportInput:
    """What a report is made of."""

    assessment: StoredAssessment
    evidence: Sequence[EvidenceRecord]
    remediations: Sequence[Remediation]
    head: ChainHead | None
    catalog: Catalog
    framework: Framework | None
    generate_time: datetime


def _score(score: Any) -> dict[str, Any]:
    return {
        "score": round(score.score, 6),
        "passing": score.passing,
        "failing": score.failing,
        "error": score.error,
        "not_assessed": score.not_assessed,
    }


def build_document(source: ReportInput) -> dict[str, Any]:
    """The report as a JSON-native document."""
    assessment = source.assessment
    wanted = [source.framework] if source.framework else list(assessment.frameworks)
    by_id = {r.evidence_id: r for r in source.evidence}
    controls = []
    for result in assessment.results:
        if result.framework not in wanted:
            continue
        control = source.catalog.controls[result.control_id]
        controls.append(
            {
                "control_id": control.control_id,
                "framework": control.framework.name,
                "family": control.family,
                "title": control.title,
                "severity": control.severity.name,
                "automated": control.automated,
                "status": result.status.name,
                "summary": result.summary,
                "remediation_id": result.remediation_id,
                "evidence": [{"evidence_id": i, "sha256": by_id[i].sha256} for i in result.evidence_ids if i in by_id],
            }
        )
    head = source.head
    return {
        "report": {
            "format_version": FORMAT_VERSION,
            "assessment_id": assessment.assessment_id,
            "frameworks": [f.name for f in wanted],
            "start_time": rfc3339(assessment.start_time),
            "finish_time": rfc3339(assessment.finish_time) if assessment.finish_time else None,
            "generate_time": rfc3339(source.generate_time),
            "started_by": assessment.started_by,
        },
        "scores": [
            {
                "framework": score.framework.name,
                "score": _score(score.overall),
                "families": {family: _score(s) for family, s in score.families.items()},
            }
            for score, _ in assessment.scores
            if score.framework in wanted
        ],
        "controls": controls,
        "remediations": [
            {
                "remediation_id": r.remediation_id,
                "control_id": r.control_id,
                "state": r.state.name,
                "severity": r.severity.name,
                "title": r.title,
                "detail": r.detail,
                "due_time": rfc3339(r.due_time) if r.due_time else None,
                "assignee": r.assignee,
            }
            for r in source.remediations
        ],
        "evidence": [
            {
                "evidence_id": r.evidence_id,
                "sequence": r.sequence,
                "kind": f"EVIDENCE_KIND_{r.kind.name}",
                "target": r.observation.target,
                "passed": r.observation.passed,
                "summary": r.observation.summary,
                "details": dict(r.observation.details),
                "collect_time": rfc3339(r.observation.collect_time),
                "sha256": r.sha256,
                "previous_chain_sha256": r.previous_chain_sha256,
                "chain_sha256": r.chain_sha256,
            }
            for r in source.evidence
        ],
        "evidence_chain_head": None
        if head is None
        else {
            "sequence": head.sequence,
            "chain_sha256": head.chain_sha256,
            "sign_time": rfc3339(head.sign_time),
            "signature": head.signature,
            "key_id": head.key_id,
            "public_key": head.public_key,
            "algorithm": "Ed25519",
        },
    }


def verify_report(document: Mapping[str, Any], public_key: str) -> list[str]:
    """Problems found checking a JSON report against `public_key` (base64); empty when it verifies.

    Checks every evidence record's digest and link, that the records are contiguous and end in
    the head, that the head is signed by `public_key`, and that every digest a control cites is
    one of the records.
    """
    problems: list[str] = []
    head = document.get("evidence_chain_head")
    if not head:
        return ["the report carries no evidence-chain head"]
    if not verify_head(head["sequence"], head["chain_sha256"], head["sign_time"], head["signature"], public_key):
        problems.append("the chain head's signature does not verify with the public key")
    records = sorted(document.get("evidence", []), key=lambda r: r["sequence"])
    previous: str | None = None
    expected: int | None = None
    digests: dict[str, str] = {}
    for record in records:
        kind = EvidenceKind[record["kind"].removeprefix("EVIDENCE_KIND_")]
        digest = observation_digest(kind, record["target"], record["passed"], record["details"], record["collect_time"])
        name = f"evidence {record['evidence_id']} (sequence {record['sequence']})"
        if digest != record["sha256"]:
            problems.append(f"{name}: content does not match its sha256")
        if expected is not None and record["sequence"] != expected:
            problems.append(f"{name}: sequence {expected} is missing")
        if previous is not None and record["previous_chain_sha256"] != previous:
            problems.append(f"{name}: does not link to the record before it")
        link = link_digest(record["sequence"], record["evidence_id"], record["sha256"], record["previous_chain_sha256"])
        if link != record["chain_sha256"]:
            problems.append(f"{name}: chain_sha256 does not match")
        previous, expected = record["chain_sha256"], record["sequence"] + 1
        digests[record["evidence_id"]] = record["sha256"]
    if records and (records[-1]["sequence"] != head["sequence"] or records[-1]["chain_sha256"] != head["chain_sha256"]):
        problems.append("the evidence does not end in the signed head")
    for control in document.get("controls", []):
        for cited in control.get("evidence", []):
            if digests.get(cited["evidence_id"]) != cited["sha256"]:
                problems.append(f"{control['control_id']}: cites evidence {cited['evidence_id']} not in the report")
    return problems
