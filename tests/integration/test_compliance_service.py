"""The compliance service in process, on both stores: assessments with every peer unreachable, the evidence
chain and its tamper detection, reports in every format verified offline, alerts, remediation, bad input."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clients.compliance import ComplianceClient
from clients.endpoints import SERVICES, free_port
from clients.errors import ShieldxError
from servers.compliance.alerts.notifications import SIGNATURE_HEADER, signature_valid
from servers.compliance.evidence.store import EvidenceStore
from servers.compliance.reports.document import verify_report
from servers.compliance.service import build
from shieldx.compliance.v1 import compliance_pb2 as pb
from tests.conftest import Running, StartServer, StartService, test_config
from tests.support.certs import ThrowawayCA
from tests.support.echo import echo_mount
from tests.support.fuzz import fuzz_service


async def start(start_service: StartService, store_config: dict[str, str], tmp_path: Path, **settings: Any) -> Running:
    closed = {service: f"127.0.0.1:{free_port()}" for service in SERVICES if service != "compliance"}
    config = test_config(tmp_path, endpoints=closed, **store_config)
    config.settings = {"monitoring": False, "probe_timeout_seconds": 3.0, "call_timeout_seconds": 1.0, **settings}
    return await start_service(build, config)


def reason(error: ShieldxError) -> str:
    info = error.error_info
    assert info is not None
    return info.reason


async def test_an_assessment_with_every_peer_down_succeeds_with_error_evidence(
    start_service: StartService, store_config: dict[str, str], tmp_path: Path
) -> None:
    running = await start(start_service, store_config, tmp_path)
    client = ComplianceClient(running.channel)
    done = (await client.run_assessment(pb.RunAssessmentRequest(request_id=str(uuid.uuid4())))).assessment
    assert done.state == pb.ASSESSMENT_STATE_SUCCEEDED
    assert {f for f in done.frameworks} == {1, 2, 3, 4}
    statuses = {r.control_id: r.status for r in done.results}
    assert statuses["SOC2-CC6.3"] == pb.CONTROL_STATUS_ERROR, "auth probes could not reach any server"
    assert statuses["GDPR-ART30"] == pb.CONTROL_STATUS_NOT_ASSESSED, "a manual control"
    # Evidence the compliance server holds itself passes: no alert is late, no breach overdue.
    assert statuses["GDPR-ART33"] == pb.CONTROL_STATUS_PASSING
    assert done.evidence_count > 0
    health = await client.list_evidence(
        pb.ListEvidenceRequest(assessment_id=done.assessment_id, kind=pb.EVIDENCE_KIND_HEALTH)
    )
    assert health.evidence and all(not e.passed and "could not observe" in e.summary for e in health.evidence)
    control = (await client.get_control(pb.GetControlRequest(control_id="ISO27001-A.9.1.2"))).control
    assert control.control_id == "ISO27001-A.5.15", "the 2013 id resolves to its 2022 control"
    assert control.latest_result.assessment_id == done.assessment_id


async def test_the_evidence_chain_verifies_and_names_a_changed_row(
    start_service: StartService, store_config: dict[str, str], tmp_path: Path
) -> None:
    running = await start(start_service, store_config, tmp_path)
    client = ComplianceClient(running.channel)
    await client.run_assessment(pb.RunAssessmentRequest())
    second = (await client.run_assessment(pb.RunAssessmentRequest())).assessment
    verified = await client.verify_evidence_chain(pb.VerifyEvidenceChainRequest())
    assert verified.valid, verified.problem
    assert verified.records_checked == verified.head.sequence
    victim = (await client.list_evidence(pb.ListEvidenceRequest(assessment_id=second.assessment_id))).evidence[-1]
    database = running.runtime._databases[0]
    await database.execute("UPDATE evidence SET passed = ? WHERE evidence_id = ?", (True, victim.evidence_id))
    broken = await client.verify_evidence_chain(pb.VerifyEvidenceChainRequest())
    assert not broken.valid
    assert broken.first_bad_evidence_id == victim.evidence_id
    assert broken.first_bad_sequence == victim.sequence


async def test_reports_in_every_format_carry_the_signed_head_and_verify_offline(
    start_service: StartService, tmp_path: Path
) -> None:
    running = await start(start_service, {"data_dir": str(tmp_path), "database_url": ""}, tmp_path)
    client = ComplianceClient(running.channel)
    done = (await client.run_assessment(pb.RunAssessmentRequest())).assessment
    head = (await client.get_evidence_chain_head(pb.GetEvidenceChainHeadRequest())).head
    public_key = head.public_key

    report = await client.generate_report(pb.GenerateReportRequest(format=pb.REPORT_FORMAT_JSON))
    assert report.assessment_id == done.assessment_id
    document = json.loads(report.content)
    assert verify_report(document, public_key) == []
    assert {c["control_id"] for c in document["controls"]} >= {"SOC2-CC6.1", "PCI-DSS-3.5.1", "GDPR-ART33"}
    other_key = base64.b64encode(bytes(32)).decode()
    assert verify_report(document, other_key), "another key does not verify the head"
    document["evidence"][0]["passed"] = not document["evidence"][0]["passed"]
    assert any(document["evidence"][0]["evidence_id"] in p for p in verify_report(document, public_key))

    markdown = (await client.generate_report(pb.GenerateReportRequest(format=pb.REPORT_FORMAT_MARKDOWN))).content
    assert b"| SOC2-CC6.1" in markdown and head.signature.encode() in markdown

    pdf = await client.generate_report(pb.GenerateReportRequest(format=pb.REPORT_FORMAT_PDF))
    assert pdf.content_type == "application/pdf"
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(pdf.content))
    text = "".join(page.extract_text() for page in reader.pages)
    assert len(reader.pages) >= 2
    assert "SOC2-CC6.1" in text and "PCI-DSS-10.5.1" in text and head.chain_sha256 in text

    oscal = await client.generate_report(pb.GenerateReportRequest(format=pb.REPORT_FORMAT_OSCAL_JSON))
    from trestle.oscal.assessment_results import AssessmentResults

    loaded = AssessmentResults.parse_obj(json.loads(oscal.content)["assessment-results"])
    findings = loaded.results[0].findings or []
    assert {f.target.target_id for f in findings} >= {"SOC2-CC6.1", "ISO27001-A.8.24"}


async def test_raise_alert_folds_by_dedup_key_and_is_acknowledged(
    start_service: StartService, store_config: dict[str, str], tmp_path: Path
) -> None:
    running = await start(start_service, store_config, tmp_path)
    client = ComplianceClient(running.channel)

    def request(severity: int, request_id: str) -> pb.RaiseAlertRequest:
        return pb.RaiseAlertRequest(
            source="shieldx.deception.v1.DeceptionService",
            category="attacker_session",
            severity=severity,
            title="Decoy activity",
            source_address="127.0.0.9",
            dedup_key="deception-alert/a1",
            request_id=request_id,
        )

    first = await client.raise_alert(request(pb.SEVERITY_MEDIUM, "r1"))
    retried = await client.raise_alert(request(pb.SEVERITY_MEDIUM, "r1"))
    folded = await client.raise_alert(request(pb.SEVERITY_HIGH, "r2"))
    assert first.created and retried == first
    assert not folded.created and folded.alert.alert_id == first.alert.alert_id
    assert folded.alert.count == 2 and folded.alert.severity == pb.SEVERITY_HIGH
    acknowledged = await client.acknowledge_alert(
        pb.AcknowledgeAlertRequest(alert_id=first.alert.alert_id, note="seen")
    )
    assert acknowledged.alert.state == pb.ALERT_STATE_ACKNOWLEDGED
    fresh = await client.raise_alert(request(pb.SEVERITY_HIGH, "r3"))
    assert fresh.created, "an acknowledged alert folds nothing more"
    listed = await client.list_alerts(pb.ListAlertsRequest(state=pb.ALERT_STATE_OPEN))
    assert [a.alert_id for a in listed.alerts] == [fresh.alert.alert_id]


@pytest.mark.parametrize(
    ("call", "request_message", "field"),
    [
        ("raise_alert", pb.RaiseAlertRequest(source="s", category="c", severity=1, title="t"), "request_id"),
        (
            "raise_alert",
            pb.RaiseAlertRequest(source="s", category="C!", severity=1, title="t", request_id="x"),
            "category",
        ),
        ("raise_alert", pb.RaiseAlertRequest(source="s", category="c", title="t", request_id="x"), "severity"),
        (
            "raise_alert",
            pb.RaiseAlertRequest(
                source="s", category="c", severity=1, title="t", source_address="nope", request_id="x"
            ),
            "source_address",
        ),
        (
            "raise_alert",
            pb.RaiseAlertRequest(source="s", category="c", severity=9, title="t", request_id="x"),
            "severity",
        ),
        ("list_controls", pb.ListControlsRequest(page_size=-1), "page_size"),
        ("list_controls", pb.ListControlsRequest(framework=77), "framework"),
        ("list_controls", pb.ListControlsRequest(status=77), "status"),
        ("get_control", pb.GetControlRequest(), "control_id"),
        ("run_assessment", pb.RunAssessmentRequest(framework=9), "framework"),
        ("get_assessment", pb.GetAssessmentRequest(), "assessment_id"),
        ("list_evidence", pb.ListEvidenceRequest(kind=99), "kind"),
        ("list_evidence", pb.ListEvidenceRequest(page_token="garbage"), "page_token"),
        ("generate_report", pb.GenerateReportRequest(), "format"),
        ("list_alerts", pb.ListAlertsRequest(min_severity=8), "min_severity"),
        ("acknowledge_alert", pb.AcknowledgeAlertRequest(), "alert_id"),
        ("update_remediation", pb.UpdateRemediationRequest(), "remediation_id"),
        ("list_score_history", pb.ListScoreHistoryRequest(), "framework"),
        ("record_breach_notification", pb.RecordBreachNotificationRequest(alert_id="a"), "authority"),
        ("list_remediations", pb.ListRemediationsRequest(state=42), "state"),
        ("list_assessments", pb.ListAssessmentsRequest(page_size=-5), "page_size"),
        ("list_frameworks", pb.ListFrameworksRequest(page_size=-1), "page_size"),
        ("get_compliance_score", pb.GetComplianceScoreRequest(framework=12), "framework"),
        ("list_notification_attempts", pb.ListNotificationAttemptsRequest(page_size=-1), "page_size"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    start_service: StartService, tmp_path: Path, call: str, request_message: Any, field: str
) -> None:
    running = await start(start_service, {"data_dir": str(tmp_path), "database_url": ""}, tmp_path)
    with pytest.raises(ShieldxError) as caught:
        await getattr(ComplianceClient(running.channel), call)(request_message)
    assert caught.value.code.name == "INVALID_ARGUMENT", caught.value.message
    assert reason(caught.value) == "INVALID_ARGUMENT"
    assert caught.value.error_info.metadata["field"] == field


async def test_fuzzed_requests_never_end_internal_and_the_server_keeps_serving(
    start_service: StartService, tmp_path: Path
) -> None:
    running = await start(start_service, {"data_dir": str(tmp_path), "database_url": ""}, tmp_path)
    client = ComplianceClient(running.channel)
    await client.run_assessment(pb.RunAssessmentRequest())  # something to list, report on and verify
    # RunAssessment is left out: each call collects evidence from the whole mesh (its bad input is in the table above).
    report = await fuzz_service(
        running.channel, pb.DESCRIPTOR.services_by_name["ComplianceService"], rounds=10, skip=("RunAssessment",)
    )
    report.assert_clean()


async def test_tls_evidence_passes_on_tls_endpoints_and_fails_on_plaintext(
    start_server: StartServer, start_service: StartService, tmp_path: Path
) -> None:
    ca = ThrowawayCA(tmp_path / "ca")
    issued = ca.issue("server", server=True)
    tls = test_config(
        tmp_path / "tls", tls__cert_file=str(issued.cert), tls__key_file=str(issued.key), tls__ca_file=str(ca.cert)
    )
    secure = await start_server(lambda rt: [echo_mount(rt)], tls)
    plain = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path / "plain"))
    peers = {s: f"127.0.0.1:{secure.server.port}" for s in SERVICES if s not in ("compliance", "deception")}
    peers["deception"] = f"127.0.0.1:{plain.server.port}"
    config = test_config(tmp_path, endpoints=peers, tls__ca_file=str(ca.cert))
    config.settings = {"monitoring": False, "certificate_min_days": 1, "call_timeout_seconds": 2.0}
    running = await start_service(build, config)
    client = ComplianceClient(running.channel)
    done = (await client.run_assessment(pb.RunAssessmentRequest(framework=pb.FRAMEWORK_PCI_DSS))).assessment
    evidence = await client.list_evidence(
        pb.ListEvidenceRequest(assessment_id=done.assessment_id, kind=pb.EVIDENCE_KIND_TLS)
    )
    by_target = {e.target.split("@")[0]: e for e in evidence.evidence}
    tokens = by_target["shieldx.tokens.v1.TokenService"]
    assert tokens.passed and tokens.details["protocol"] in ("TLSv1.2", "TLSv1.3") and tokens.details["chain_verified"]
    assert tokens.details["days_to_expiry"] >= 1
    deception = by_target["shieldx.deception.v1.DeceptionService"]
    assert not deception.passed and "plaintext" in deception.summary
    result = next(r for r in done.results if r.control_id == "PCI-DSS-4.2.1")
    assert result.status == pb.CONTROL_STATUS_FAILING and "DeceptionService" in result.summary
    assert "TokenService" not in result.summary, "only the plaintext endpoint is named"


async def test_a_purge_is_recorded_and_the_chain_still_verifies_from_its_anchor(
    start_service: StartService, store_config: dict[str, str], tmp_path: Path
) -> None:
    running = await start(start_service, store_config, tmp_path)
    client = ComplianceClient(running.channel)
    first = (await client.run_assessment(pb.RunAssessmentRequest(framework=pb.FRAMEWORK_GDPR))).assessment
    second = (await client.run_assessment(pb.RunAssessmentRequest(framework=pb.FRAMEWORK_GDPR))).assessment
    store = EvidenceStore(running.runtime._databases[0])
    purge = await store.purge(second.start_time.ToDatetime(UTC), datetime.now(UTC))
    assert purge is not None and purge.records == first.evidence_count
    left = await client.list_evidence(pb.ListEvidenceRequest(page_size=1000))
    assert {e.assessment_id for e in left.evidence} == {second.assessment_id}
    verified = await client.verify_evidence_chain(pb.VerifyEvidenceChainRequest())
    assert verified.valid, verified.problem
    assert verified.purged_records == first.evidence_count
    assert verified.records_checked == second.evidence_count


async def test_webhooks_are_signed_retried_with_backoff_and_every_attempt_recorded(
    start_service: StartService, tmp_path: Path
) -> None:
    received: list[tuple[bytes, str]] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.rfile.read(int(self.headers["Content-Length"])), self.headers[SIGNATURE_HEADER]))
            self.send_response(503 if len(received) <= 2 else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        running = await start(
            start_service,
            {"data_dir": str(tmp_path), "database_url": ""},
            tmp_path,
            webhooks=[f"http://127.0.0.1:{server.server_address[1]}/hook"],
            webhook_secret="s3cret",
            webhook_initial_backoff_seconds=0.1,
            escalation_interval_seconds=0.1,
        )
        client = ComplianceClient(running.channel)
        raised = await client.raise_alert(
            pb.RaiseAlertRequest(
                source="ops", category="personal_data_breach", severity=pb.SEVERITY_HIGH, title="t", request_id="w1"
            )
        )
        alert_id = raised.alert.alert_id
        assert raised.alert.notification_deadline.seconds - raised.alert.first_seen_time.seconds == 72 * 3600

        async def webhook_attempts() -> list[pb.NotificationAttempt]:
            listed = await client.list_notification_attempts(pb.ListNotificationAttemptsRequest(alert_id=alert_id))
            return [a for a in listed.attempts if a.channel.startswith("webhook:")]

        attempts: list[pb.NotificationAttempt] = []
        for _ in range(100):
            attempts = await webhook_attempts()
            if any(a.delivered for a in attempts):
                break
            await asyncio.sleep(0.1)
        assert [(a.attempt, a.delivered, a.status_code) for a in reversed(attempts)] == [
            (1, False, 503),
            (2, False, 503),
            (3, True, 204),
        ]
        assert all(signature_valid("s3cret", body, signature) for body, signature in received)
        assert not signature_valid("wrong", *received[0])
        notified = await client.record_breach_notification(
            pb.RecordBreachNotificationRequest(alert_id=alert_id, authority="CNIL", reference="n-1", request_id="b1")
        )
        assert notified.alert.HasField("authority_notify_time") and notified.alert.authority_reference == "n-1"
    finally:
        server.shutdown()
        server.server_close()


async def test_an_overdue_breach_fails_art_33_and_its_task_shows_overdue_in_the_list_and_metrics(
    start_service: StartService, tmp_path: Path
) -> None:
    running = await start(
        start_service,
        {"data_dir": str(tmp_path), "database_url": ""},
        tmp_path,
        due_critical_days=0.00001,  # under a second
        escalation_interval_seconds=0.1,
    )
    client = ComplianceClient(running.channel)
    long_ago = pb.RaiseAlertRequest(
        source="ops", category="personal_data_breach", severity=pb.SEVERITY_HIGH, title="export leaked", request_id="x1"
    )
    long_ago.occur_time.FromDatetime(datetime.now(UTC) - timedelta(hours=73))
    breach = (await client.raise_alert(long_ago)).alert
    done = (await client.run_assessment(pb.RunAssessmentRequest(framework=pb.FRAMEWORK_GDPR))).assessment
    art33 = next(r for r in done.results if r.control_id == "GDPR-ART33")
    assert art33.status == pb.CONTROL_STATUS_FAILING and breach.alert_id in art33.summary
    await asyncio.sleep(1.0)
    (task,) = (await client.list_remediations(pb.ListRemediationsRequest(control_id="GDPR-ART33"))).remediations
    assert task.severity == pb.SEVERITY_CRITICAL and task.due_time.ToDatetime(UTC) < datetime.now(UTC)

    def overdue() -> float:
        return running.runtime.registry.get_sample_value("shieldx_compliance_remediations_overdue") or 0.0

    for _ in range(50):
        if overdue() == 1.0:
            break
        await asyncio.sleep(0.1)
    assert overdue() == 1.0
    await client.record_breach_notification(
        pb.RecordBreachNotificationRequest(alert_id=breach.alert_id, authority="CNIL", request_id="n1")
    )
    again = (await client.run_assessment(pb.RunAssessmentRequest(framework=pb.FRAMEWORK_GDPR))).assessment
    assert next(r for r in again.results if r.control_id == "GDPR-ART33").status == pb.CONTROL_STATUS_PASSING
    (task,) = (await client.list_remediations(pb.ListRemediationsRequest(control_id="GDPR-ART33"))).remediations
    assert task.state == pb.REMEDIATION_STATE_RESOLVED
