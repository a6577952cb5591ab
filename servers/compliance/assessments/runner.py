"""Running an assessment: collect each evidence kind once, chain it, evaluate, score, remediate, alert, sign.

The evidence is appended and the head signed in one transaction, so two servers sharing a store
never interleave chains (the second append collides on the sequence and is retried on the new end).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from servers.compliance.alerts.desk import AlertDesk
from servers.compliance.alerts.domain import SELF, AlertReport
from servers.compliance.assessments.domain import ControlOutcome, evaluate, framework_scores, kinds_for
from servers.compliance.assessments.store import AssessmentState, AssessmentStore, StoredAssessment, StoredResult
from servers.compliance.catalog.domain import Catalog, Control
from servers.compliance.domain import ControlStatus, Framework, Severity
from servers.compliance.evidence.collectors import Collectors
from servers.compliance.evidence.domain import EvidenceRecord, chain
from servers.compliance.evidence.signing import HeadSigner
from servers.compliance.evidence.store import EvidenceStore
from servers.compliance.metrics import ComplianceMetrics
from servers.compliance.remediation.domain import DuePolicy, plan
from servers.compliance.remediation.store import RemediationStore
from servers.mesh import storage

log = logging.getLogger(__name__)

NOT_PASSING = (ControlStatus.FAILING, ControlStatus.ERROR)


@dataclass(frozen=True)
class Thresholds:
    """Share of a framework's controls at a severity that may fail before a framework alert."""

    by_severity: dict[Severity, float]


@dataclass(frozen=True)
class AssessmentSettings:
    """What an assessment needs beyond its collaborators."""

    probe_timeout_seconds: float
    thresholds: Thresholds
    due: DuePolicy


class Assessor:
    """Runs assessments and keeps their outcome."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        collectors: Collectors,
        evidence: EvidenceStore,
        assessments: AssessmentStore,
        remediations: RemediationStore,
        desk: AlertDesk,
        signer: HeadSigner,
        metrics: ComplianceMetrics,
        settings: AssessmentSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self.catalog = catalog
        self.collectors = collectors
        self.evidence = evidence
        self.assessments = assessments
        self.remediations = remediations
        self.desk = desk
        self.signer = signer
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self._lock = asyncio.Lock()

    async def run(self, frameworks: Sequence[Framework], started_by: str) -> StoredAssessment:
        """One assessment of `frameworks`, start to finish; a probe failure is evidence, not an error."""
        async with self._lock:  # one at a time per process: they share the chain end
            return await self._run(frameworks, started_by)

    async def _run(self, frameworks: Sequence[Framework], started_by: str) -> StoredAssessment:
        started = time.perf_counter()
        assessment_id = f"asm_{secrets.token_hex(8)}"
        begun = StoredAssessment(
            assessment_id, tuple(sorted(frameworks)), AssessmentState.RUNNING, self.clock(), None, "", started_by, 0
        )
        async with self.evidence.database.transaction() as tx:
            await self.assessments.start(tx, begun)
        try:
            controls = self.catalog.of(frameworks)
            kinds = kinds_for(self.catalog.checks(frameworks))
            observations = await self.collectors.collect(sorted(kinds), self.settings.probe_timeout_seconds)
            records = await self._append(assessment_id, observations)
            now = self.clock()
            outcomes = [evaluate(c, records, now) for c in controls]
            previous = await self.assessments.latest_statuses()
            results = await self._remediate(assessment_id, outcomes, now)
            scores = framework_scores(outcomes)
            async with self.evidence.database.transaction() as tx:
                await self.assessments.finish(
                    tx,
                    assessment_id,
                    state=AssessmentState.SUCCEEDED,
                    finish_time=self.clock(),
                    evidence_count=len(records),
                    results=results,
                    scores=scores,
                )
            await self._alert(assessment_id, outcomes, previous)
        except Exception as error:
            log.exception("assessment %s broke off", assessment_id)
            async with self.evidence.database.transaction() as tx:
                await self.assessments.finish(
                    tx,
                    assessment_id,
                    state=AssessmentState.FAILED,
                    finish_time=self.clock(),
                    evidence_count=0,
                    error=f"{type(error).__name__}: {error}"[:500],
                )
            raise
        finally:
            self.metrics.assessment_seconds.observe(time.perf_counter() - started)
        done = await self.assessments.get(assessment_id)
        assert done is not None
        self.metrics.record_assessment(done, {cid: c.severity for cid, c in self.catalog.controls.items()})
        return done

    async def _append(self, assessment_id: str, observations: Sequence[object]) -> list[EvidenceRecord]:
        ids = [f"evd_{secrets.token_hex(8)}" for _ in observations]
        for _ in range(20):
            try:
                async with self.evidence.database.transaction() as tx:
                    sequence, end = await self.evidence.chain_end(tx)
                    records = chain(zip(ids, observations, strict=True), assessment_id, sequence, end)  # type: ignore[arg-type]
                    await self.evidence.append(tx, records)
                    last = records[-1] if records else None
                    head_at = (last.sequence, last.chain_sha256) if last else (sequence, end)
                    if head_at[0] > 0:
                        await self.evidence.add_head(tx, self.signer.sign(head_at[0], head_at[1], self.clock()))
                return records
            except (storage.UniqueViolation, storage.TransientError):
                await asyncio.sleep(0.01)  # another server appended first: link onto its end
        raise storage.TransientError("could not append evidence: the chain kept moving")

    async def _remediate(
        self, assessment_id: str, outcomes: Sequence[ControlOutcome], now: datetime
    ) -> list[StoredResult]:
        results = []
        for outcome in outcomes:
            control = outcome.control
            remediation_id = ""
            if control.automated and outcome.status in (ControlStatus.FAILING, ControlStatus.PASSING):
                remediation_id = await self._plan(control, outcome, assessment_id, now)
            results.append(
                StoredResult(
                    assessment_id,
                    control.control_id,
                    control.framework,
                    outcome.status,
                    outcome.summary,
                    outcome.evidence_ids,
                    outcome.evaluate_time,
                    remediation_id,
                )
            )
        return results

    async def _plan(self, control: Control, outcome: ControlOutcome, assessment_id: str, now: datetime) -> str:
        for _ in range(10):
            try:
                async with self.evidence.database.transaction() as tx:
                    latest = await self.remediations.latest_for(tx, control.control_id)
                    step = plan(control, outcome.status, outcome.summary, latest, assessment_id, self.settings.due, now)
                    if step.write is None:
                        return ""
                    if step.created:
                        await self.remediations.insert(tx, step.write)
                    else:
                        await self.remediations.update(tx, step.write)
                    return step.write.remediation_id if outcome.status is ControlStatus.FAILING else ""
            except (storage.TransientError, storage.UniqueViolation):
                await asyncio.sleep(0.01)
        return ""

    async def _alert(
        self, assessment_id: str, outcomes: Sequence[ControlOutcome], previous: dict[str, ControlStatus]
    ) -> None:
        async with self.evidence.database.transaction() as tx:
            for outcome in outcomes:
                control = outcome.control
                before = previous.get(control.control_id)
                if outcome.status is ControlStatus.FAILING and before is not ControlStatus.FAILING:
                    await self.desk.raise_alert(
                        tx,
                        AlertReport(
                            source=SELF,
                            category="control_failing",
                            severity=control.severity,
                            title=f"{control.control_id} {control.title} is failing"[:200],
                            description=outcome.summary[:4000],
                            subject=control.control_id,
                            attributes={"assessment_id": assessment_id, "previous": before.name if before else "NONE"},
                            dedup_key=f"control/{control.control_id}",
                        ),
                    )
            for framework, severity, share in self._over_threshold(outcomes):
                await self.desk.raise_alert(
                    tx,
                    AlertReport(
                        source=SELF,
                        category="framework_threshold",
                        severity=severity,
                        title=f"{framework.name}: {share:.0%} of {severity.name} controls not passing"[:200],
                        description=f"Assessment {assessment_id}: above the {severity.name} threshold "
                        f"{self.settings.thresholds.by_severity[severity]:.0%}.",
                        subject=framework.name,
                        attributes={"assessment_id": assessment_id, "share": f"{share:.3f}"},
                        dedup_key=f"threshold/{framework.name}/{severity.name}",
                    ),
                )

    def _over_threshold(self, outcomes: Sequence[ControlOutcome]) -> list[tuple[Framework, Severity, float]]:
        found = []
        for framework in sorted({o.control.framework for o in outcomes}):
            for severity, limit in sorted(self.settings.thresholds.by_severity.items()):
                mine = [
                    o
                    for o in outcomes
                    if o.control.framework is framework
                    and o.control.severity is severity
                    and o.status is not ControlStatus.NOT_ASSESSED
                ]
                if not mine:
                    continue
                share = sum(1 for o in mine if o.status in NOT_PASSING) / len(mine)
                if share > limit:
                    found.append((framework, severity, share))
        return found
