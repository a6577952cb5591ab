"""Compliance against a mesh of six real processes with auth on: credits restarted with auth off fails the
auth-enforced controls naming it (remediation, alert), restarted with auth on passes and resolves them; a
changed credits event fails the audit-chain controls naming it; a stopped server is ERROR evidence while
RunAssessment still succeeds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.compliance import ComplianceClient
from clients.connect import connect
from clients.credits import CreditsClient
from clients.endpoints import SERVICES
from shieldx.compliance.v1 import compliance_pb2 as pb
from shieldx.credits.v1 import credits_pb2
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.slow

AUTH_CONTROLS = ("SOC2-CC6.3", "ISO27001-A.5.15", "PCI-DSS-7.2.1")
AUDIT_CONTROLS = ("PCI-DSS-10.3.2", "ISO27001-A.8.15")


class Mesh:
    """The six servers as processes sharing one state directory (credentials, SQLite stores)."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        common = {
            "SHIELDX_AUTH__ENABLED": "true",
            "SHIELDX_DATA_DIR": str(self.state),
            "SHIELDX_TOKENS__BOOTSTRAP": "true",
            "SHIELDX_COMPLIANCE__MONITORING": "false",
        }
        self.servers = {s: ServerProcess(f"servers.{s}", tmp_path, env=dict(common)) for s in SERVICES}
        peers = ",".join(f"{name}={server.address}" for name, server in self.servers.items())
        for server in self.servers.values():
            server.env["SHIELDX_ENDPOINTS"] = peers

    def start(self) -> None:
        for server in self.servers.values():  # tokens first: the others fetch its keys
            server.start()

    def restart(self, service: str, **env: str) -> None:
        server = self.servers[service]
        server.stop()
        server.env.update(env)
        server.start()

    def stop(self) -> None:
        for server in reversed(self.servers.values()):
            server.stop()

    def client(self, service: str) -> object:
        return connect(service, data_dir=self.state, target=self.servers[service].address, routed=False)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    running = Mesh(tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()


async def assess(mesh: Mesh) -> tuple[pb.Assessment, dict[str, pb.ControlResult]]:
    channel = mesh.client("compliance")
    try:
        done = (await ComplianceClient(channel).run_assessment(pb.RunAssessmentRequest(), timeout=120)).assessment  # type: ignore[arg-type]
    finally:
        await channel.close()  # type: ignore[attr-defined]
    assert done.state == pb.ASSESSMENT_STATE_SUCCEEDED
    return done, {r.control_id: r for r in done.results}


async def compliance_call(mesh: Mesh, method: str, request: object) -> object:
    channel = mesh.client("compliance")
    try:
        return await getattr(ComplianceClient(channel), method)(request)  # type: ignore[arg-type]
    finally:
        await channel.close()  # type: ignore[attr-defined]


def test_credits_with_auth_off_fails_the_auth_controls_and_with_auth_on_resolves_them(mesh: Mesh) -> None:
    _, results = asyncio.run(assess(mesh))
    for control_id in AUTH_CONTROLS:
        assert results[control_id].status == pb.CONTROL_STATUS_PASSING, results[control_id].summary

    mesh.restart("credits", SHIELDX_AUTH__ENABLED="false")
    _, results = asyncio.run(assess(mesh))
    failing = results["SOC2-CC6.3"]
    assert failing.status == pb.CONTROL_STATUS_FAILING
    assert "shieldx.credits.v1.CreditsService" in failing.summary and "tokens" not in failing.summary.lower()
    assert failing.remediation_id
    tasks = asyncio.run(compliance_call(mesh, "list_remediations", pb.ListRemediationsRequest(control_id="SOC2-CC6.3")))
    (task,) = tasks.remediations  # type: ignore[attr-defined]
    assert task.state == pb.REMEDIATION_STATE_OPEN and task.remediation_id == failing.remediation_id
    alerts = asyncio.run(compliance_call(mesh, "list_alerts", pb.ListAlertsRequest()))
    raised = [a for a in alerts.alerts if a.category == "control_failing" and a.subject == "SOC2-CC6.3"]  # type: ignore[attr-defined]
    assert len(raised) == 1 and raised[0].state == pb.ALERT_STATE_OPEN

    mesh.restart("credits", SHIELDX_AUTH__ENABLED="true")
    _, results = asyncio.run(assess(mesh))
    for control_id in AUTH_CONTROLS:
        assert results[control_id].status == pb.CONTROL_STATUS_PASSING, results[control_id].summary
    tasks = asyncio.run(compliance_call(mesh, "list_remediations", pb.ListRemediationsRequest(control_id="SOC2-CC6.3")))
    (task,) = tasks.remediations  # type: ignore[attr-defined]
    assert task.state == pb.REMEDIATION_STATE_RESOLVED
    assert "Resolved automatically" in task.notes[-1].text


def test_a_changed_credits_event_and_a_stopped_server_show_in_the_evidence(mesh: Mesh) -> None:
    async def buy() -> None:
        channel = mesh.client("credits")
        try:
            credits = CreditsClient(channel)  # type: ignore[arg-type]
            for amount in (100, 250):
                await credits.purchase(
                    credits_pb2.PurchaseRequest(account_id="acme", amount=amount, payment_reference=f"pi_{amount}")
                )
        finally:
            await channel.close()  # type: ignore[attr-defined]

    asyncio.run(buy())
    _, results = asyncio.run(assess(mesh))
    for control_id in AUDIT_CONTROLS:
        assert results[control_id].status != pb.CONTROL_STATUS_ERROR, results[control_id].summary
    assert results["PCI-DSS-10.3.2"].status == pb.CONTROL_STATUS_PASSING, results["PCI-DSS-10.3.2"].summary

    with sqlite3.connect(mesh.state / "credits.db") as database:  # as an attacker with file access could
        database.execute("DROP TRIGGER event_store_no_update")
        changed = database.execute(
            "UPDATE event_store SET body = replace(body, '250', '25') WHERE account_id = 'acme' AND version = 2"
        ).rowcount
    assert changed == 1
    _, results = asyncio.run(assess(mesh))
    for control_id in AUDIT_CONTROLS:
        result = results[control_id]
        assert result.status == pb.CONTROL_STATUS_FAILING, result.summary
        assert "account acme event 2" in result.summary

    mesh.servers["deception"].stop()
    done, results = asyncio.run(assess(mesh))
    health = asyncio.run(
        compliance_call(
            mesh,
            "list_evidence",
            pb.ListEvidenceRequest(assessment_id=done.assessment_id, kind=pb.EVIDENCE_KIND_HEALTH),
        )
    )
    deception = [e for e in health.evidence if e.target.startswith("shieldx.deception.v1.DeceptionService@")]  # type: ignore[attr-defined]
    assert len(deception) == 1 and not deception[0].passed
    assert results["SOC2-CC7.2"].status in (pb.CONTROL_STATUS_ERROR, pb.CONTROL_STATUS_FAILING)
