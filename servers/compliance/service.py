"""The compliance service on the mesh runtime: `build(runtime)` and the thin `ComplianceServicer`.

Each RPC parses its request, calls the catalog, the assessor, the alert desk or a store, and
builds the response; the rules live in the sub-packages' `domain.py` files. Mutations are
idempotent by `request_id` through the request ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from clients.channel import ChannelOptions, ChannelTls, open_channel
from servers.compliance import messages
from servers.compliance.alerts.desk import AlertDesk
from servers.compliance.alerts.domain import AlertReport
from servers.compliance.alerts.notifications import Notifier
from servers.compliance.alerts.store import AlertFilter, AlertStore
from servers.compliance.assessments.domain import CHECKS
from servers.compliance.assessments.runner import AssessmentSettings, Assessor
from servers.compliance.assessments.store import AssessmentStore, StoredAssessment
from servers.compliance.catalog.domain import Catalog, load_catalog
from servers.compliance.domain import ControlStatus, EvidenceKind, Framework, Severity
from servers.compliance.evidence.collectors import SERVICE_NAMES, Collectors, MeshAccess
from servers.compliance.evidence.domain import first_mismatch, rfc3339
from servers.compliance.evidence.signing import HeadSigner, verify_head
from servers.compliance.evidence.store import EvidenceFilter, EvidenceStore
from servers.compliance.metrics import ComplianceMetrics
from servers.compliance.monitoring import ElectedSchedule
from servers.compliance.remediation.domain import Change, RemediationState, apply_change
from servers.compliance.remediation.store import RemediationFilter, RemediationStore
from servers.compliance.reports.document import ReportInput, build_document
from servers.compliance.reports.render import RENDERERS
from servers.compliance.settings import ComplianceSettings
from servers.mesh.auth import current_caller
from servers.mesh.background import repeat
from servers.mesh.config import service_settings
from servers.mesh.errors import InvalidArgument, NotFound
from servers.mesh.idempotency import RequestLedger, fingerprint, validate_request_id
from servers.mesh.leadership import leadership_for
from servers.mesh.pagination import page_request
from servers.mesh.server import Mount, Runtime, Service
from servers.mesh.storage import Transaction, to_micros
from shieldx.compliance.v1 import compliance_pb2 as pb
from shieldx.compliance.v1 import compliance_pb2_grpc

log = logging.getLogger(__name__)

LEDGER_DOMAIN = "shieldx.compliance.v1"
_FORMATS = {
    pb.REPORT_FORMAT_JSON: "json",
    pb.REPORT_FORMAT_MARKDOWN: "markdown",
    pb.REPORT_FORMAT_PDF: "pdf",
    pb.REPORT_FORMAT_OSCAL_JSON: "oscal",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _enum(value: int, allowed: type[Any], field: str) -> Any:
    if value == 0:
        return None
    try:
        return allowed(value)
    except ValueError:
        raise InvalidArgument(field, f"unknown value {value}") from None


def _id(value: str, field: str, *, required: bool = True) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return ""
    if len(value) > 100 or not value.isascii() or not value.isprintable():
        raise InvalidArgument(field, "is not an id this service issued")
    return value


def _cursor_int(cursor: Any, key: str) -> int:
    value = cursor.get(key) if cursor else None
    if not isinstance(value, int):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return value


def _cursor_str(cursor: Any, key: str) -> str:
    value = cursor.get(key) if cursor else None
    if not isinstance(value, str):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return value


@dataclass
class Parts:
    """Everything the servicer works with."""

    catalog: Catalog
    assessor: Assessor
    assessments: AssessmentStore
    evidence: EvidenceStore
    remediations: RemediationStore
    alerts: AlertStore
    desk: AlertDesk
    ledger: RequestLedger
    metrics: ComplianceMetrics
    clock: Any


class ComplianceServicer(compliance_pb2_grpc.ComplianceServiceServicer):
    """`shieldx.compliance.v1.ComplianceService`: parse, decide in the domain, persist, answer."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.catalog = parts.catalog

    # --- catalog ----------------------------------------------------------------------------------------

    async def ListFrameworks(self, request: pb.ListFrameworksRequest, context: Any) -> pb.ListFrameworksResponse:
        """The frameworks in enum order."""
        page = page_request(request.page_size, request.page_token)
        start = _cursor_int(page.cursor, "after") if page.cursor else 0
        entries = [f for f in self.catalog.frameworks.values() if f.framework > start]
        shown = entries[: page.size]
        more = len(entries) > page.size
        return pb.ListFrameworksResponse(
            frameworks=[messages.framework_info(f) for f in shown],
            next_page_token=page.next_token({"after": int(shown[-1].framework)} if more else None),
        )

    async def ListControls(self, request: pb.ListControlsRequest, context: Any) -> pb.ListControlsResponse:
        """Controls by id, filtered."""
        framework = messages.framework_filter(request.framework)
        status = _enum(request.status, ControlStatus, "status")
        if len(request.family) > 200:
            raise InvalidArgument("family", "must be at most 200 characters")
        filters = {"framework": request.framework, "family": request.family, "status": request.status}
        page = page_request(request.page_size, request.page_token, filters)
        after = _cursor_str(page.cursor, "after") if page.cursor else ""
        statuses = await self.parts.assessments.latest_statuses()
        frameworks = [framework] if framework else list(Framework)
        chosen = [
            c
            for c in self.catalog.of(frameworks)
            if c.control_id > after
            and (not request.family or c.family == request.family)
            and (status is None or statuses.get(c.control_id, ControlStatus.NOT_ASSESSED) is status)
        ]
        shown = chosen[: page.size]
        results = [await self.parts.assessments.latest_result(c.control_id) for c in shown]
        return pb.ListControlsResponse(
            controls=[messages.control(c, r) for c, r in zip(shown, results, strict=True)],
            next_page_token=page.next_token({"after": shown[-1].control_id} if len(chosen) > page.size else None),
        )

    async def GetControl(self, request: pb.GetControlRequest, context: Any) -> pb.GetControlResponse:
        """One control (ids and older aliases) with its latest result."""
        control = self.catalog.resolve(request.control_id)
        latest = await self.parts.assessments.latest_result(control.control_id)
        return pb.GetControlResponse(control=messages.control(control, latest))

    # --- assessments ------------------------------------------------------------------------------------

    async def RunAssessment(self, request: pb.RunAssessmentRequest, context: Any) -> pb.RunAssessmentResponse:
        """Assess now and answer when finished; a retry with the same request id gets the same assessment."""
        framework = messages.framework_filter(request.framework)
        if request.request_id:
            validate_request_id(request.request_id)
            replayed = await self.parts.ledger.replay(
                request.request_id, fingerprint("RunAssessment", request), pb.RunAssessmentResponse
            )
            if replayed is not None:
                return replayed
        done = await self.parts.assessor.run([framework] if framework else list(Framework), current_caller().subject)
        response = pb.RunAssessmentResponse(assessment=messages.assessment(done))

        async def work(tx: Transaction) -> pb.RunAssessmentResponse:
            return response

        return await self.parts.ledger.execute("RunAssessment", request, pb.RunAssessmentResponse, work)

    async def GetAssessment(self, request: pb.GetAssessmentRequest, context: Any) -> pb.GetAssessmentResponse:
        """One assessment with every result."""
        found = await self._assessment(request.assessment_id)
        return pb.GetAssessmentResponse(assessment=messages.assessment(found))

    async def _assessment(self, assessment_id: str) -> StoredAssessment:
        found = await self.parts.assessments.get(_id(assessment_id, "assessment_id"))
        if found is None:
            raise NotFound("assessment", assessment_id)
        return found

    async def ListAssessments(self, request: pb.ListAssessmentsRequest, context: Any) -> pb.ListAssessmentsResponse:
        """Newest first, without results."""
        framework = messages.framework_filter(request.framework)
        page = page_request(request.page_size, request.page_token, {"framework": request.framework})
        after = (_cursor_int(page.cursor, "t"), _cursor_str(page.cursor, "id")) if page.cursor else None
        found = await self.parts.assessments.page(framework, after, page.size + 1)
        shown = found[: page.size]
        last = shown[-1] if shown else None
        return pb.ListAssessmentsResponse(
            assessments=[messages.assessment(a, with_results=False) for a in shown],
            next_page_token=page.next_token(
                {"t": to_micros(last.start_time), "id": last.assessment_id} if last and len(found) > page.size else None
            ),
        )

    async def ListEvidence(self, request: pb.ListEvidenceRequest, context: Any) -> pb.ListEvidenceResponse:
        """Newest first, filtered by assessment, control or kind."""
        assessment_id = _id(request.assessment_id, "assessment_id", required=False)
        kind = messages.kind_filter(request.kind)
        evidence_ids: tuple[str, ...] | None = None
        if request.control_id:
            control = self.catalog.resolve(request.control_id)
            if assessment_id:
                evidence_ids = await self.parts.assessments.evidence_ids_of(assessment_id, control.control_id) or ()
            else:
                evidence_ids = await self.parts.assessments.evidence_ids_of_control(control.control_id)
        filters = {"a": assessment_id, "c": request.control_id, "k": request.kind}
        page = page_request(request.page_size, request.page_token, filters)
        before = _cursor_int(page.cursor, "before") if page.cursor else None
        found = await self.parts.evidence.page(EvidenceFilter(assessment_id, evidence_ids, kind), before, page.size + 1)
        shown = found[: page.size]
        return pb.ListEvidenceResponse(
            evidence=[messages.evidence(r) for r in shown],
            next_page_token=page.next_token({"before": shown[-1].sequence} if len(found) > page.size else None),
        )

    async def GetComplianceScore(
        self, request: pb.GetComplianceScoreRequest, context: Any
    ) -> pb.GetComplianceScoreResponse:
        """Scores from the given assessment, or the latest succeeded one per framework."""
        framework = messages.framework_filter(request.framework)
        wanted = [framework] if framework else list(Framework)
        scores = []
        if request.assessment_id:
            found = await self._assessment(request.assessment_id)
            scores = [
                messages.framework_score(s, found.assessment_id, when)
                for s, when in found.scores
                if s.framework in wanted
            ]
        else:
            for each in wanted:
                latest = await self.parts.assessments.latest_succeeded(each)
                if latest is not None:
                    scores += [
                        messages.framework_score(s, latest.assessment_id, when)
                        for s, when in latest.scores
                        if s.framework is each
                    ]
        return pb.GetComplianceScoreResponse(frameworks=scores)

    async def ListScoreHistory(self, request: pb.ListScoreHistoryRequest, context: Any) -> pb.ListScoreHistoryResponse:
        """One framework's scores, newest first."""
        framework = messages.framework_filter(request.framework)
        if framework is None:
            raise InvalidArgument("framework", "is required")
        page = page_request(request.page_size, request.page_token, {"framework": request.framework})
        before = _cursor_int(page.cursor, "before") if page.cursor else None
        found = await self.parts.assessments.history(framework, before, page.size + 1)
        shown = found[: page.size]
        return pb.ListScoreHistoryResponse(
            scores=[messages.framework_score(s, aid, when) for aid, s, when in shown],
            next_page_token=page.next_token({"before": to_micros(shown[-1][2])} if len(found) > page.size else None),
        )

    # --- evidence chain ----------------------------------------------------------------------------------

    async def VerifyEvidenceChain(
        self, request: pb.VerifyEvidenceChainRequest, context: Any
    ) -> pb.VerifyEvidenceChainResponse:
        """Every record, link and the head signature; names the first record that does not match."""
        head = await self.parts.evidence.latest_head()
        anchor_sequence, anchor_chain, purged = await self.parts.evidence.anchor()
        if head is None:
            return pb.VerifyEvidenceChainResponse(valid=True, purged_records=purged)
        links = await self.parts.evidence.links(head.sequence)
        problem = first_mismatch(links, anchor_sequence, anchor_chain)
        response = pb.VerifyEvidenceChainResponse(
            records_checked=len(links), head=messages.chain_head(head), purged_records=purged
        )
        if problem is not None:
            response.first_bad_evidence_id = problem.evidence_id
            response.first_bad_sequence = problem.sequence
            response.problem = problem.problem
            return response
        ends = links[-1].chain_sha256 if links else anchor_chain
        if ends != head.chain_sha256 or (links and links[-1].sequence != head.sequence):
            response.problem = "the chain does not end in the signed head"
            return response
        if not verify_head(head.sequence, head.chain_sha256, rfc3339(head.sign_time), head.signature, head.public_key):
            response.problem = "the head's signature does not verify"
            return response
        response.valid = True
        return response

    async def GetEvidenceChainHead(
        self, request: pb.GetEvidenceChainHeadRequest, context: Any
    ) -> pb.GetEvidenceChainHeadResponse:
        """The latest signed head."""
        return pb.GetEvidenceChainHeadResponse(head=messages.chain_head(await self.parts.evidence.latest_head()))

    # --- reports -----------------------------------------------------------------------------------------

    async def GenerateReport(self, request: pb.GenerateReportRequest, context: Any) -> pb.GenerateReportResponse:
        """The assessment rendered in the asked format, carrying the evidence digests and the signed head."""
        name = _FORMATS.get(request.format)
        if name is None:
            raise InvalidArgument("format", "is required (JSON, MARKDOWN, PDF or OSCAL_JSON)")
        framework = messages.framework_filter(request.framework)
        if request.assessment_id:
            found = await self._assessment(request.assessment_id)
        else:
            latest = await self.parts.assessments.latest_succeeded(framework)
            if latest is None:
                raise NotFound("assessment", "latest succeeded", reason="NO_ASSESSMENT")
            found = latest
        if framework is not None and framework not in found.frameworks:
            raise InvalidArgument("framework", f"was not assessed by {found.assessment_id}")
        records = await self.parts.evidence.of_assessment(found.assessment_id)
        head = await self.parts.evidence.head_at(records[-1].sequence) if records else None
        remediations = await self.parts.remediations.page(RemediationFilter(), None, 1000)
        wanted_ids = {r.control_id for r in found.results if framework is None or r.framework is framework}
        now = self.parts.clock()
        document = build_document(
            ReportInput(
                assessment=found,
                evidence=records,
                remediations=[
                    r for r in remediations if r.control_id in wanted_ids and r.state is not RemediationState.RESOLVED
                ],
                head=head,
                catalog=self.catalog,
                framework=framework,
                generate_time=now,
            )
        )
        render, media_type = RENDERERS[name]
        content = render(document)
        return pb.GenerateReportResponse(
            report_id=hashlib.sha256(content).hexdigest(),
            format=request.format,
            content_type=media_type,
            content=content,
            assessment_id=found.assessment_id,
            generate_time=messages.timestamp(now),
            chain_head=messages.chain_head(head),
        )

    # --- alerts ------------------------------------------------------------------------------------------

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Any) -> pb.ListAlertsResponse:
        """Most recently seen first, filtered."""
        _enum(request.state, _AlertStates, "state")
        _enum(request.min_severity, Severity, "min_severity")
        if len(request.source) > 200:
            raise InvalidArgument("source", "must be at most 200 characters")
        filters = {"s": request.state, "m": request.min_severity, "src": request.source}
        page = page_request(request.page_size, request.page_token, filters)
        after = (_cursor_int(page.cursor, "t"), _cursor_str(page.cursor, "id")) if page.cursor else None
        found = await self.parts.alerts.page(
            AlertFilter(request.state, request.min_severity, request.source), after, page.size + 1
        )
        shown = found[: page.size]
        last = shown[-1] if shown else None
        return pb.ListAlertsResponse(
            alerts=[messages.alert(a) for a in shown],
            next_page_token=page.next_token(
                {"t": to_micros(last.last_seen), "id": last.alert_id} if last and len(found) > page.size else None
            ),
        )

    async def RaiseAlert(self, request: pb.RaiseAlertRequest, context: Any) -> pb.RaiseAlertResponse:
        """Open or fold an alert; idempotent by the required request id."""
        if not request.request_id:
            raise InvalidArgument("request_id", "is required")
        severity = _enum(request.severity, Severity, "severity")
        if severity is None:
            raise InvalidArgument("severity", "is required")
        occur = messages.from_timestamp(request.occur_time, "occur_time") if request.HasField("occur_time") else None
        report = AlertReport(
            source=request.source,
            category=request.category,
            severity=severity,
            title=request.title,
            description=request.description,
            subject=request.subject,
            source_address=request.source_address,
            attributes=dict(request.attributes),
            dedup_key=request.dedup_key,
            occur_time=occur,
        )

        async def work(tx: Transaction) -> pb.RaiseAlertResponse:
            raised = await self.parts.desk.raise_alert(tx, report)
            return pb.RaiseAlertResponse(alert=messages.alert(raised.alert), created=raised.created)

        response = await self.parts.ledger.execute("RaiseAlert", request, pb.RaiseAlertResponse, work)
        self.parts.desk.notifier.wake.set()
        return response

    async def AcknowledgeAlert(self, request: pb.AcknowledgeAlertRequest, context: Any) -> pb.AcknowledgeAlertResponse:
        """Mark an alert acknowledged by the caller."""
        alert_id = _id(request.alert_id, "alert_id")
        if len(request.note) > 2000:
            raise InvalidArgument("note", "must be at most 2,000 characters")
        by = current_caller().subject

        async def work(tx: Transaction) -> pb.AcknowledgeAlertResponse:
            return pb.AcknowledgeAlertResponse(
                alert=messages.alert(await self.parts.desk.acknowledge(tx, alert_id, by, request.note))
            )

        return await self.parts.ledger.execute("AcknowledgeAlert", request, pb.AcknowledgeAlertResponse, work)

    async def RecordBreachNotification(
        self, request: pb.RecordBreachNotificationRequest, context: Any
    ) -> pb.RecordBreachNotificationResponse:
        """Stop a breach's 72-hour clock."""
        alert_id = _id(request.alert_id, "alert_id")
        when = messages.from_timestamp(request.notify_time, "notify_time") if request.HasField("notify_time") else None
        if not 1 <= len(request.authority) <= 200:
            raise InvalidArgument("authority", "must be 1-200 characters")

        async def work(tx: Transaction) -> pb.RecordBreachNotificationResponse:
            alert = await self.parts.desk.record_breach_notification(
                tx, alert_id, request.authority, request.reference, when
            )
            return pb.RecordBreachNotificationResponse(alert=messages.alert(alert))

        return await self.parts.ledger.execute(
            "RecordBreachNotification", request, pb.RecordBreachNotificationResponse, work
        )

    async def ListNotificationAttempts(
        self, request: pb.ListNotificationAttemptsRequest, context: Any
    ) -> pb.ListNotificationAttemptsResponse:
        """Delivery attempts, newest first."""
        alert_id = _id(request.alert_id, "alert_id", required=False)
        page = page_request(request.page_size, request.page_token, {"alert_id": alert_id})
        after = (_cursor_int(page.cursor, "t"), _cursor_str(page.cursor, "id")) if page.cursor else None
        found = await self.parts.alerts.attempts(alert_id, after, page.size + 1)
        shown = found[: page.size]
        last = shown[-1] if shown else None
        return pb.ListNotificationAttemptsResponse(
            attempts=[messages.attempt(a) for a in shown],
            next_page_token=page.next_token(
                {"t": to_micros(last.attempt_time), "id": last.attempt_id} if last and len(found) > page.size else None
            ),
        )

    # --- remediation -------------------------------------------------------------------------------------

    async def ListRemediations(self, request: pb.ListRemediationsRequest, context: Any) -> pb.ListRemediationsResponse:
        """Most severe first, then oldest first."""
        state = _enum(request.state, RemediationState, "state")
        messages.framework_filter(request.framework)
        control_id = self.catalog.resolve(request.control_id).control_id if request.control_id else ""
        filters = {"s": request.state, "f": request.framework, "c": control_id}
        page = page_request(request.page_size, request.page_token, filters)
        after = (
            (_cursor_int(page.cursor, "s"), _cursor_int(page.cursor, "t"), _cursor_str(page.cursor, "id"))
            if page.cursor
            else None
        )
        found = await self.parts.remediations.page(
            RemediationFilter(state, request.framework, control_id), after, page.size + 1
        )
        shown = found[: page.size]
        last = shown[-1] if shown else None
        return pb.ListRemediationsResponse(
            remediations=[messages.remediation(r) for r in shown],
            next_page_token=page.next_token(
                {"s": int(last.severity), "t": to_micros(last.create_time), "id": last.remediation_id}
                if last and len(found) > page.size
                else None
            ),
        )

    async def UpdateRemediation(
        self, request: pb.UpdateRemediationRequest, context: Any
    ) -> pb.UpdateRemediationResponse:
        """A person's change to a task."""
        remediation_id = _id(request.remediation_id, "remediation_id")
        state = _enum(request.state, RemediationState, "state") if request.HasField("state") else None
        if request.HasField("state") and state is None:
            raise InvalidArgument("state", "must not be UNSPECIFIED")
        due = messages.from_timestamp(request.due_time, "due_time") if request.HasField("due_time") else None
        change = Change(
            state=state,
            assignee=request.assignee if request.HasField("assignee") else None,
            due_time=due,
            note=request.note,
        )
        author = current_caller().subject

        async def work(tx: Transaction) -> pb.UpdateRemediationResponse:
            task = await self.parts.remediations.get(remediation_id, tx)
            if task is None:
                raise NotFound("remediation", remediation_id)
            updated = await self.parts.remediations.update(tx, apply_change(task, change, author, self.parts.clock()))
            return pb.UpdateRemediationResponse(remediation=messages.remediation(updated))

        return await self.parts.ledger.execute("UpdateRemediation", request, pb.UpdateRemediationResponse, work)


class _AlertStates:
    """AlertState numbers accepted in filters."""

    def __init__(self, value: int) -> None:
        if value not in (1, 2):
            raise ValueError(value)


def mesh_access(runtime: Runtime, call_timeout: float) -> MeshAccess:
    """How the collectors reach the mesh from this process."""
    config = runtime.config
    tls = config.tls
    endpoints = {service: config.endpoint(service) for service in SERVICE_NAMES if service != "compliance"}
    if "compliance" in config.endpoints or config.port > 0:  # a free port (0) is known only once bound
        endpoints["compliance"] = config.endpoints.get("compliance", f"{config.host}:{config.port}")
    anonymous: dict[str, grpc.aio.Channel] = {}

    def anonymous_channel(service: str) -> grpc.aio.Channel:
        if service not in anonymous:
            secure = ChannelTls(tls.ca_file, tls.cert_file, tls.key_file) if tls.enabled else None
            options = ChannelOptions(tls=secure, retry=None, telemetry=False)
            anonymous[service] = open_channel(endpoints[service], options)
        return anonymous[service]

    def tls_context() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=tls.ca_file or None)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        context.set_alpn_protocols(["h2"])
        return context

    return MeshAccess(
        endpoints=endpoints,
        channel=runtime.channel,
        anonymous_channel=anonymous_channel,
        tls_context=tls_context,
        call_timeout=call_timeout,
    )


async def build(runtime: Runtime, *, clock: Any = _now) -> Service:
    """The compliance service: store, catalog, collectors, servicer and background loops."""
    settings = service_settings(ComplianceSettings, runtime.config)
    settings.check()
    database = await runtime.database("servers.compliance.migrations")
    catalog = load_catalog(set(CHECKS))
    metrics = ComplianceMetrics(runtime.registry)
    signer = HeadSigner.from_file(
        Path(settings.evidence_signing_key_file or runtime.config.data_path / "compliance-evidence-signing.key")
    )
    alerts = AlertStore(database)
    notifier = Notifier(alerts, settings.webhook_targets(), settings.retry_policy(), clock)
    desk = AlertDesk(alerts, notifier, settings.response_policy(), clock)
    evidence = EvidenceStore(database)
    assessments = AssessmentStore(database)
    remediations = RemediationStore(database)
    window = timedelta(days=settings.alert_window_days)

    async def alert_response() -> list[Any]:
        return await desk.alert_response_evidence(window)

    collectors = Collectors(
        mesh_access(runtime, settings.call_timeout_seconds),
        settings.policy(),
        {EvidenceKind.ALERT_RESPONSE: alert_response, EvidenceKind.BREACH_NOTIFICATION: desk.breach_evidence},
    )
    assessor = Assessor(
        catalog=catalog,
        collectors=collectors,
        evidence=evidence,
        assessments=assessments,
        remediations=remediations,
        desk=desk,
        signer=signer,
        metrics=metrics,
        settings=AssessmentSettings(settings.probe_timeout_seconds, settings.thresholds(), settings.due_policy()),
        clock=clock,
    )
    ledger = RequestLedger(database, LEDGER_DOMAIN)
    parts = Parts(catalog, assessor, assessments, evidence, remediations, alerts, desk, ledger, metrics, clock)
    servicer = ComplianceServicer(parts)
    runtime.posture.protections.update({"evidence_chain_signed": True, "webhooks_signed": True})
    runtime.posture.retention_seconds.update(
        {
            "evidence": int(settings.evidence_retention_days * 86400),
            "alerts": 0,
            "request_ids": int(settings.request_id_retention_seconds),
        }
    )
    schedule = ElectedSchedule(
        leadership_for(database, "monitor", owner="compliance"),
        settings.monitoring_interval_seconds,
        lambda: assessor.run(list(Framework), "shieldx-compliance (scheduled)"),
    )

    async def escalate_and_deliver() -> None:
        await desk.escalate_due()
        await notifier.deliver_due()
        metrics.record_alerts(await alerts.open_counts())
        now = clock()
        metrics.record_overdue(sum(1 for t in await remediations.active() if t.overdue(now)))

    async def housekeeping() -> None:
        now = clock()
        await evidence.purge(now - timedelta(days=settings.evidence_retention_days), now)
        await ledger.purge(settings.request_id_retention_seconds)

    async def alert_desk_forever() -> None:
        """Escalate and deliver every interval, and at once when an alert is raised. Servers sharing a
        store leave it to the elected one, so an alert is escalated and delivered once, not once each."""
        while True:
            notifier.wake.clear()
            try:
                if not settings.monitoring or schedule.leading:
                    await escalate_and_deliver()
            except Exception:
                log.exception("escalation or delivery failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(notifier.wake.wait(), settings.escalation_interval_seconds)

    async def housekeeping_forever() -> None:
        await repeat("compliance.housekeeping", housekeeping, 3600.0, finish_round_on_cancel=True)

    tasks = [alert_desk_forever, housekeeping_forever]
    if settings.monitoring:
        tasks.append(schedule.run_forever)
    return Service(
        mounts=[Mount.of(pb, compliance_pb2_grpc, "ComplianceService", servicer=servicer)],
        tasks=tasks,
    )
