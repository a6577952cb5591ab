"""Compliance against a mesh of six real processes with auth on: credits restarted with auth off fails the
auth-enforced controls naming it (remediation, alert), restarted with auth on passes and resolves them; a
changed credits event fails the audit-chain controls naming it; a stopped server is ERROR evidence while
RunAssessment still succeeds."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.channel import ChannelOptions, ChannelTls, open_channel
from clients.compliance import ComplianceClient
from clients.connect import connect
from clients.credentials import CredentialsFileTokenSource
from clients.credits import CreditsClient
from clients.endpoints import SERVICES
from shieldx.compliance.v1 import compliance_pb2 as pb
from shieldx.credits.v1 import credits_pb2
from tests.support.certs import ThrowawayCA
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.slow

AUTH_CONTROLS = ("SOC2-CC6.3", "ISO27001-A.5.15", "PCI-DSS-7.2.1")
AUDIT_CONTROLS = ("PCI-DSS-10.3.2", "ISO27001-A.8.15")


class Mesh:
    """The six servers as processes sharing one state directory (credentials, SQLite stores);
    with `ca`, every server serves TLS with a certificate from it and verifies its peers'."""

    def __init__(self, tmp_path: Path, ca: ThrowawayCA | None = None) -> None:
        self.state = tmp_path / "state"
        self.ca = ca
        common = {
            "SHIELDX_AUTH__ENABLED": "true",
            "SHIELDX_DATA_DIR": str(self.state),
            "SHIELDX_TOKENS__BOOTSTRAP": "true",
            "SHIELDX_COMPLIANCE__MONITORING": "false",
        }
        if ca is not None:
            issued = ca.issue("mesh", server=True)
            common |= {
                "SHIELDX_TLS__CERT_FILE": str(issued.cert),
                "SHIELDX_TLS__KEY_FILE": str(issued.key),
                "SHIELDX_TLS__CA_FILE": str(ca.cert),
                "SHIELDX_COMPLIANCE__CERTIFICATE_MIN_DAYS": "1",  # the throwaway CA issues for two days
            }
        self.servers = {s: ServerProcess(f"servers.{s}", tmp_path, env=dict(common)) for s in SERVICES}
        peers = ",".join(f"{name}={server.address}" for name, server in self.servers.items())
        for server in self.servers.values():
            server.env["SHIELDX_ENDPOINTS"] = peers

    def start(self) -> None:
        for server in self.servers.values():  # tokens first: the others fetch its keys
            server.start(wait=self.ca is None)
            if self.ca is not None:
                asyncio.run(self._wait_serving_tls(server))

    async def _wait_serving_tls(self, server: ServerProcess) -> None:
        channel = open_channel(server.address, ChannelOptions(tls=ChannelTls(str(self.ca.cert)), retry=None))  # type: ignore[union-attr]
        try:
            for _ in range(300):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.1)
            raise TimeoutError(f"{server.name} did not serve over TLS")
        finally:
            await channel.close()

    def restart(self, service: str, **env: str) -> None:
        server = self.servers[service]
        server.stop()
        server.env.update(env)
        server.start()

    def stop(self) -> None:
        for server in reversed(self.servers.values()):
            server.stop()

    def client(self, service: str) -> object:
        if self.ca is None:
            return connect(service, data_dir=self.state, target=self.servers[service].address, routed=False)
        tls = ChannelOptions(tls=ChannelTls(str(self.ca.cert)))

        def token_channel(target: str) -> grpc.aio.Channel:
            return open_channel(target, tls)

        source = CredentialsFileTokenSource(self.state / "credentials", "admin", token_channel)
        secure = ChannelOptions(tls=ChannelTls(str(self.ca.cert)), token_source=source)
        return open_channel(self.servers[service].address, secure)


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


TLS_CONTROLS = ("PCI-DSS-4.2.1", "SOC2-CC6.7", "ISO27001-A.8.20")


def test_tls_controls_fail_on_the_plaintext_mesh_and_pass_on_a_mesh_started_with_tls(
    mesh: Mesh, tmp_path: Path
) -> None:
    _, plaintext = asyncio.run(assess(mesh))
    for control_id in TLS_CONTROLS:
        assert plaintext[control_id].status == pb.CONTROL_STATUS_FAILING, plaintext[control_id].summary
        assert "plaintext" in plaintext[control_id].summary
    mesh.stop()

    secure = Mesh(tmp_path / "tls", ThrowawayCA(tmp_path / "ca"))
    try:
        secure.start()
        _, results = asyncio.run(assess(secure))
    finally:
        secure.stop()
    for control_id in TLS_CONTROLS:
        assert results[control_id].status == pb.CONTROL_STATUS_PASSING, results[control_id].summary
    for control_id in AUTH_CONTROLS:
        assert results[control_id].status == pb.CONTROL_STATUS_PASSING, results[control_id].summary
