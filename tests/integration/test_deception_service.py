"""The deception service on the mesh runtime, on SQLite and PostgreSQL: live decoys reached with real
clients, sessions and deduplicated alerts, decoy selection, attribution, synthetic data over the
stream, honeytokens reported the way the token service reports a refused credential, alerts
forwarded to compliance, restarts, and the fuzz harness."""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients.deception import DeceptionClient, credential_fingerprint, report_presented_credential
from clients.errors import ShieldxError
from clients.tokens import TokenClient
from servers.deception.attribution import adjusted_rand_index
from servers.deception.protocols.mysql import parse_mysql_handshake, parse_mysql_packet
from servers.deception.service import build
from servers.mesh.config import ConfigError, MeshConfig
from servers.mesh.server import Mount, Runtime
from servers.tokens.client_secrets import ClientSecretHasher
from servers.tokens.domain import validate_client_id
from servers.tokens.service import build as build_tokens
from shieldx.compliance.v1 import compliance_pb2, compliance_pb2_grpc
from shieldx.deception.v1 import deception_pb2 as pb
from shieldx.tokens.v1 import tokens_pb2 as tokens_pb
from tests.conftest import Running, StartServer, StartService, stop_service, test_config
from tests.support.fuzz import fuzz_service
from tests.support.polling import eventually
from tests.support.sockets import read_line

HOST = "127.0.0.1"
TOKENS = "shieldx.tokens.v1.TokenService"
ISSUE_TOKEN = "/shieldx.tokens.v1.TokenService/IssueToken"


class RecordingCompliance(compliance_pb2_grpc.ComplianceServiceServicer):
    """A compliance service that only takes alerts, remembering each request."""

    def __init__(self) -> None:
        self.raised: list[compliance_pb2.RaiseAlertRequest] = []

    async def RaiseAlert(
        self, request: compliance_pb2.RaiseAlertRequest, context: Any
    ) -> compliance_pb2.RaiseAlertResponse:
        self.raised.append(request)
        return compliance_pb2.RaiseAlertResponse(created=True)


async def start_compliance(start_server: StartServer, tmp_path: Path, servicer: Any = None) -> Running:
    """A compliance server on a free port; without a servicer every RPC answers UNIMPLEMENTED."""
    mounts: Callable[[Runtime], list[Mount]] = lambda _: [  # noqa: E731
        Mount.of(compliance_pb2, compliance_pb2_grpc, "ComplianceService", servicer=servicer)
    ]
    return await start_server(mounts, test_config(tmp_path / "compliance", "compliance"))


def deception_config(tmp_path: Path, store_config: dict[str, str], compliance: str, **settings: Any) -> MeshConfig:
    config = test_config(tmp_path, "deception", **store_config)
    config.endpoints = {"compliance": compliance}
    config.settings = {"forwarding": {"initial_backoff_seconds": 0.05, "poll_seconds": 0.2}, **settings}
    return config


@pytest.fixture
async def compliance(start_server: StartServer, tmp_path: Path) -> Running:
    return await start_compliance(start_server, tmp_path)


@pytest.fixture
async def running(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path, compliance: Running
) -> Running:
    # store_config comes first so that it is torn down last: the service stops before its schema goes.
    return await start_service(build, deception_config(tmp_path, store_config, compliance.address))


@pytest.fixture
def client(running: Running) -> DeceptionClient:
    return DeceptionClient(running.channel)


async def interactions(client: DeceptionClient, **filters: Any) -> list[pb.Interaction]:
    found: list[pb.Interaction] = []
    token = ""
    while True:
        page = await client.list_interactions(pb.ListInteractionsRequest(page_size=1000, page_token=token, **filters))
        found += page.interactions
        token = page.next_page_token
        if not token:
            return found


async def decoy_ports(client: DeceptionClient) -> dict[str, int]:
    decoys = (await client.list_decoys(pb.ListDecoysRequest())).decoys
    assert all(d.listening and d.bind_address == HOST and d.port for d in decoys)
    return {d.decoy_id: d.port for d in decoys}


# --- real clients -----------------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", path, headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"})
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def ssh_banner(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        identification = read_line(sock)
        sock.sendall(b"SSH-2.0-libssh2_1.10.0\r\n")
        return identification


def mysql_greeting(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        header = sock.recv(4, socket.MSG_WAITALL)
        return header + sock.recv(int.from_bytes(header[:3], "little"), socket.MSG_WAITALL)


def redis_ping(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return read_line(sock)


def ftp_login(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        greeting = read_line(sock)
        sock.sendall(b"USER admin\r\n")
        read_line(sock)
        sock.sendall(b"PASS hunter2\r\n")
        read_line(sock)
        return greeting


def smtp_ehlo(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        banner = read_line(sock)
        sock.sendall(b"EHLO probe.example.net\r\n")
        while not read_line(sock).startswith(b"250 "):
            pass
        sock.sendall(b"QUIT\r\n")
        read_line(sock)
        return banner


async def template(client: DeceptionClient, template_id: str) -> pb.Template:
    return (await client.get_template(pb.GetTemplateRequest(template_id=template_id))).template


# --- decoys, sessions, alerts -----------------------------------------------------------------


async def test_each_live_decoy_answers_a_real_client_with_its_template_and_is_recorded_with_its_stage(
    client: DeceptionClient,
) -> None:
    ports = await decoy_ports(client)
    assert set(ports) == {"http-1", "ssh-1", "mysql-1", "redis-1", "ftp-1", "smtp-1"}

    status, headers = await asyncio.to_thread(http_get, ports["http-1"], "/")
    assert status == 200 and headers["Server"] == (await template(client, "http")).http.server_header
    status, _ = await asyncio.to_thread(http_get, ports["http-1"], "/cgi-bin/../../../../etc/passwd")
    assert status == 404
    identification = await asyncio.to_thread(ssh_banner, ports["ssh-1"])
    assert identification == (await template(client, "ssh")).ssh.identification.encode() + b"\r\n"
    greeting = parse_mysql_handshake(parse_mysql_packet(await asyncio.to_thread(mysql_greeting, ports["mysql-1"]))[1])
    assert greeting.server_version == (await template(client, "mysql")).mysql.server_version
    pong = await asyncio.to_thread(redis_ping, ports["redis-1"])
    assert pong.startswith(b"-NOAUTH" if (await template(client, "redis")).redis.requires_auth else b"+PONG\r\n")
    ftp_greeting = await asyncio.to_thread(ftp_login, ports["ftp-1"])
    expected_ftp = (await template(client, "ftp")).ftp.greeting.format(local_address=f"::ffff:{HOST}")
    assert ftp_greeting == expected_ftp.encode() + b"\r\n"
    banner = await asyncio.to_thread(smtp_ehlo, ports["smtp-1"])
    assert banner == (await template(client, "smtp")).smtp.banner.encode() + b"\r\n"

    recorded = await eventually(lambda: _at_least(interactions(client), 7))
    stages = {(i.decoy_id, i.stage) for i in recorded}
    assert stages == {
        ("http-1", pb.RECON_STAGE_BANNER_GRAB),
        ("http-1", pb.RECON_STAGE_EXPLOIT_ATTEMPT),
        ("ssh-1", pb.RECON_STAGE_BANNER_GRAB),
        ("mysql-1", pb.RECON_STAGE_SCAN),  # read the greeting, sent nothing
        ("redis-1", pb.RECON_STAGE_BANNER_GRAB),
        ("ftp-1", pb.RECON_STAGE_LOGIN_ATTEMPT),
        ("smtp-1", pb.RECON_STAGE_BANNER_GRAB),
    }
    assert all(i.source_address == HOST and i.source_port > 0 for i in recorded)
    ftp = next(i for i in recorded if i.decoy_id == "ftp-1")
    assert [(c.username, c.secret) for c in ftp.credentials] == [("admin", "hunter2")]
    ssh = next(i for i in recorded if i.decoy_id == "ssh-1")
    assert ssh.client_banner == "SSH-2.0-libssh2_1.10.0"
    exploit = await client.list_interactions(pb.ListInteractionsRequest(stage=pb.RECON_STAGE_EXPLOIT_ATTEMPT))
    assert [i.decoy_id for i in exploit.interactions] == ["http-1"] and "path_traversal" in exploit.interactions[
        0
    ].indicators

    (session,) = (await client.list_sessions(pb.ListSessionsRequest(source_address=HOST))).sessions
    assert session.event_count == 7 and session.stage == pb.RECON_STAGE_EXPLOIT_ATTEMPT
    timeline = await client.get_session(pb.GetSessionRequest(session_id=session.session_id))
    assert sorted((e.interaction.decoy_id, e.stage) for e in timeline.events) == sorted(stages)
    assert all(e.interaction.session_id == session.session_id for e in timeline.events)
    assert {i.session_id for i in recorded} == {session.session_id}
    listed = await client.list_decoys(pb.ListDecoysRequest())
    assert sum(d.interaction_count for d in listed.decoys) == 7


async def _at_least(found: Any, count: int) -> Any:
    items = await found
    return items if len(items) >= count else None


async def test_a_thousand_connections_from_one_source_are_one_deduplicated_alert(client: DeceptionClient) -> None:
    ports = list((await decoy_ports(client)).values())

    async def touch(i: int) -> None:
        _, writer = await asyncio.open_connection(HOST, ports[i % len(ports)])
        writer.close()
        await writer.wait_closed()

    for batch in range(20):
        await asyncio.gather(*(touch(batch * 50 + i) for i in range(50)))

    async def scanned() -> list[pb.Alert] | None:
        alerts = (await client.list_alerts(pb.ListAlertsRequest(source_address=HOST))).alerts
        return list(alerts) if alerts and alerts[0].count == 1000 else None

    (alert,) = await eventually(scanned, timeout=60)
    assert alert.kind == pb.ALERT_KIND_DECOY_INTERACTION and alert.severity == pb.SEVERITY_LOW
    assert alert.stage == pb.RECON_STAGE_SCAN and sorted(alert.decoy_ids) == sorted(
        f"{p}-1" for p in ("http", "ssh", "mysql", "redis", "ftp", "smtp")
    )
    assert len(await interactions(client, source_address=HOST)) == 1000
    (session,) = (await client.list_sessions(pb.ListSessionsRequest())).sessions
    assert session.event_count == 1000 and alert.session_id == session.session_id


async def test_recon_from_other_services_lands_in_the_sources_session_and_escalates_its_alert(
    client: DeceptionClient,
) -> None:
    created = await client.create_session(
        pb.CreateSessionRequest(source_address="198.51.100.7", labels={"ticket": "SEC-12"}, request_id="s-1")
    )
    again = await client.create_session(
        pb.CreateSessionRequest(source_address="198.51.100.7", labels={"ticket": "SEC-12"}, request_id="s-1")
    )
    assert again == created
    probe = await client.log_recon(
        pb.LogReconRequest(
            source_address="198.51.100.7",
            report=pb.ReconReport(kind=pb.RECON_KIND_PERMISSION_PROBE, reporting_service="credits", method="/x"),
        )
    )
    forged = await client.log_recon(
        pb.LogReconRequest(
            source_address="198.51.100.7",
            report=pb.ReconReport(kind=pb.RECON_KIND_FORGED_TOKEN, reporting_service=TOKENS, detail="bad signature"),
        )
    )
    assert probe.session_id == forged.session_id == created.session.session_id
    assert probe.alert.alert_id == forged.alert.alert_id and forged.alert.count == 2
    assert (probe.alert.severity, forged.alert.severity) == (pb.SEVERITY_MEDIUM, pb.SEVERITY_HIGH)
    timeline = await client.get_session(pb.GetSessionRequest(session_id=created.session.session_id))
    assert [e.recon.kind for e in timeline.events] == [pb.RECON_KIND_PERMISSION_PROBE, pb.RECON_KIND_FORGED_TOKEN]
    assert timeline.session.labels == {"ticket": "SEC-12"} and timeline.session.stage == pb.RECON_STAGE_LOGIN_ATTEMPT


# --- decoy selection --------------------------------------------------------------------------


async def test_selections_and_feedback_change_the_decoy_graph_and_replay_measures_regret(
    client: DeceptionClient,
) -> None:
    before = await client.get_decoy_graph(pb.GetDecoyGraphRequest())
    assert before.total_selections == 0 and before.discount == pytest.approx(0.998)

    context = pb.AttackerContext(source_address="203.0.113.9", features={"tool": "nmap"})
    first = await client.select_decoy(pb.SelectDecoyRequest(context=context, seed=7, request_id="sel-1"))
    assert await client.select_decoy(pb.SelectDecoyRequest(context=context, seed=7, request_id="sel-1")) == first
    assert first.seed == 7 and first.draw == 0 and len(first.scores) == 6 and first.decoy.port > 0
    assert first.context_bucket == "stage=-|tool=nmap|target_service=-" and 0 < first.propensity <= 1
    feedback = await client.submit_feedback(pb.SubmitFeedbackRequest(selection_id=first.selection_id, engaged=True))
    assert feedback.stats.decoy_id == first.decoy.decoy_id and feedback.stats.posterior_alpha == pytest.approx(2.0)
    logged = [(first.decoy.decoy_id, first.propensity, 1.0)]  # what the test saw: decoy, propensity, reward

    # Attackers of this context only ever engage with SSH: the graph learns it.
    for _ in range(60):
        chosen = await client.select_decoy(pb.SelectDecoyRequest(context=context))
        engaged = chosen.decoy.decoy_id == "ssh-1"
        await client.submit_feedback(pb.SubmitFeedbackRequest(selection_id=chosen.selection_id, engaged=engaged))
        logged.append((chosen.decoy.decoy_id, chosen.propensity, 1.0 if engaged else 0.0))

    graph = await client.get_decoy_graph(pb.GetDecoyGraphRequest())
    stats = {d.decoy_id: d for d in graph.decoys}
    assert graph.total_selections == 61 and sum(d.selections for d in graph.decoys) == 61
    assert max(stats.values(), key=lambda d: d.posterior_mean).decoy_id == "ssh-1"
    assert stats["ssh-1"].engagement_rate == 1.0 and stats["ssh-1"].protocol == pb.PROTOCOL_SSH
    assert stats["ssh-1"].selections > 61 / 6, "Thompson sampling favours the decoy that engages"

    with pytest.raises(ShieldxError) as twice:
        await client.submit_feedback(pb.SubmitFeedbackRequest(selection_id=first.selection_id, engaged=False))
    assert twice.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert twice.value.reason == "FEEDBACK_ALREADY_SUBMITTED"

    report = await client.replay_policy(pb.ReplayPolicyRequest(policy=pb.SELECTION_POLICY_UCB1, seed=3))
    assert report.seed == 3 and report.rounds > 0 and report.best_fixed_decoy_id == "ssh-1"
    # The baselines from the log as the test saw it, by hand: each decoy's engagement rate with
    # 1/propensity weights; the best fixed decoy (SSH, engaged every time) and uniform choice
    # earn their rate in each replayed round.
    rates = {}
    for decoy in {d for d, _, _ in logged}:
        shown = [(p, r) for d, p, r in logged if d == decoy]
        rates[decoy] = sum(r / p for p, r in shown) / sum(1 / p for p, _ in shown)
    assert rates["ssh-1"] == 1.0
    best_fixed, random_choice = report.rounds * 1.0, report.rounds * sum(rates.values()) / len(rates)
    assert report.best_fixed_reward == pytest.approx(best_fixed)
    assert report.random_reward == pytest.approx(random_choice)
    # Rewards are 0 or 1, one per replayed round: the policy's total is a count of engaged rounds.
    assert report.policy_reward == int(report.policy_reward) and 0 <= report.policy_reward <= report.rounds
    assert report.regret_vs_best_fixed == pytest.approx(best_fixed - report.policy_reward)
    assert report.regret_vs_random == pytest.approx(random_choice - report.policy_reward)
    assert report.curve[-1].regret_vs_best_fixed == pytest.approx(report.regret_vs_best_fixed)


# --- synthetic data and honeytokens -----------------------------------------------------------


async def stream(client: DeceptionClient, **fields: Any) -> list[pb.GenerateSyntheticDataResponse]:
    return [chunk async for chunk in client.generate_synthetic_data(pb.GenerateSyntheticDataRequest(**fields))]


def rows_bytes(chunks: list[pb.GenerateSyntheticDataResponse]) -> bytes:
    parts = []
    for chunk in chunks:
        field = chunk.WhichOneof("rows")
        assert field is not None
        rows = getattr(chunk, field)
        parts.append(rows.SerializeToString(deterministic=True) + chunk.quality.SerializeToString(deterministic=True))
    return b"".join(parts)


@pytest.mark.parametrize(
    ("kind", "column"),
    [(pb.DATASET_KIND_USERS, "users"), (pb.DATASET_KIND_TRANSACTIONS, "transactions"),
     (pb.DATASET_KIND_NETWORK_FLOWS, "network_flows")],
)  # fmt: skip
async def test_default_parameters_score_at_least_095_and_the_same_seed_streams_identical_bytes(
    client: DeceptionClient, kind: int, column: str
) -> None:
    chunks = await stream(client, kind=kind, count=40_000, seed=2024)

    assert [c.chunk_index for c in chunks] == [0, 1, 2, 3] and [c.last for c in chunks] == [False] * 3 + [True]
    assert sum(c.row_count for c in chunks) == 40_000 and {c.WhichOneof("rows") for c in chunks} == {column}
    assert len({c.batch_id for c in chunks}) == 1 and all(c.seed == 2024 and c.generator_version for c in chunks)
    batch = chunks[-1].batch_quality
    assert batch.row_count == 40_000 and batch.overall_score >= 0.95, batch
    assert all(c.quality.overall_score >= 0.95 for c in chunks)

    again = await stream(client, kind=kind, count=40_000, seed=2024)
    assert again[0].batch_id != chunks[0].batch_id
    assert rows_bytes(again) == rows_bytes(chunks)
    other = await stream(client, kind=kind, count=40_000, seed=2025)
    assert rows_bytes(other) != rows_bytes(chunks)


async def test_a_retried_request_id_streams_the_same_batch_and_plants_no_new_tokens(client: DeceptionClient) -> None:
    request = {"kind": pb.DATASET_KIND_USERS, "count": 3000, "chunk_size": 1000, "honeytoken_count": 4}
    first = await stream(client, request_id="gen-1", **request)
    retry = await stream(client, request_id="gen-1", **request)

    assert [c.batch_id for c in retry] == [c.batch_id for c in first] and rows_bytes(retry) == rows_bytes(first)
    planted = [t for c in first for t in c.honeytokens]
    assert len(planted) == 4 and [t for c in retry for t in c.honeytokens] == planted
    users = [u for c in first for u in zip(c.users.username, c.users.api_key, strict=True)]
    assert all(users[t.row_index] == (t.username, t.secret) for t in planted)

    with pytest.raises(ShieldxError) as reused:
        await stream(client, kind=pb.DATASET_KIND_USERS, count=3000, seed=first[0].seed, honeytoken_count=1)
    assert reused.value.code == grpc.StatusCode.FAILED_PRECONDITION and reused.value.reason == "SEED_ALREADY_PLANTED"
    with pytest.raises(ShieldxError) as reuse_id:
        await stream(client, request_id="gen-1", kind=pb.DATASET_KIND_USERS, count=10)
    assert reuse_id.value.reason == "REQUEST_ID_REUSED"


async def test_a_planted_honeytoken_reported_as_the_token_service_reports_it_raises_a_critical_alert_naming_its_batch(
    client: DeceptionClient,
) -> None:
    chunks = await stream(client, kind=pb.DATASET_KIND_USERS, count=2000, honeytoken_count=2)
    token = next(t for c in chunks for t in c.honeytokens)
    assert token.batch_id == chunks[0].batch_id

    # What the token service does when IssueToken refuses a client id and secret.
    reported = await report_presented_credential(
        client,
        source_address="203.0.113.50",
        claimed_subject="svc-billing-1a2b3c",
        secret=token.secret,
        reporting_service=TOKENS,
        method=ISSUE_TOKEN,
        detail="IssueToken refused: INVALID_CLIENT",
    )

    assert reported.honeytoken_matched
    alert = reported.alert
    assert alert.kind == pb.ALERT_KIND_HONEYTOKEN_USED and alert.severity == pb.SEVERITY_CRITICAL
    assert alert.batch_id == token.batch_id and alert.honeytoken_id == token.honeytoken_id
    assert token.batch_id in alert.summary and alert.session_id == reported.session_id
    critical = (await client.list_alerts(pb.ListAlertsRequest(min_severity=pb.SEVERITY_CRITICAL))).alerts
    assert [a.alert_id for a in critical] == [alert.alert_id]

    wrong = await report_presented_credential(
        client,
        source_address="203.0.113.50",
        claimed_subject="svc-billing-1a2b3c",
        secret=token.secret[:-1] + ("A" if token.secret[-1] != "A" else "B"),
        reporting_service=TOKENS,
    )
    assert not wrong.honeytoken_matched and wrong.alert.kind == pb.ALERT_KIND_RECON
    assert wrong.alert.severity == pb.SEVERITY_HIGH


async def test_a_real_token_service_refusing_a_planted_honeytoken_reports_it_to_a_real_deception_service(
    client: DeceptionClient, running: Running, start_service: StartService, tmp_path: Path
) -> None:
    chunks = await stream(client, kind=pb.DATASET_KIND_USERS, count=2000, honeytoken_count=2)
    planted = [t for c in chunks for t in c.honeytokens]
    token = planted[0]
    tokens_config = test_config(
        tmp_path / "tokens",
        "tokens",
        settings={"argon2_opslimit": 1, "argon2_memlimit": 64 * 1024, "bootstrap": False},
    )
    tokens_config.endpoints = {"deception": running.address}
    tokens = await start_service(build_tokens, tokens_config)
    token_service = TokenClient(tokens.channel)

    for presented in (token.secret, "not-a-planted-secret-" + "x" * 22):
        with pytest.raises(ShieldxError) as refused:
            await token_service.issue_token(
                tokens_pb.IssueTokenRequest(client_id=token.username, client_secret=presented, scopes=["credits.read"])
            )
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

    def reports(outcome: str) -> float:
        value = tokens.runtime.registry.get_sample_value("shieldx_tokens_recon_reports_total", {"outcome": outcome})
        return value or 0.0

    async def honeytoken_alerts() -> list[pb.Alert]:
        alerts = (await client.list_alerts(pb.ListAlertsRequest(min_severity=pb.SEVERITY_CRITICAL))).alerts
        return [a for a in alerts if a.kind == pb.ALERT_KIND_HONEYTOKEN_USED]

    [alert] = await eventually(honeytoken_alerts, what="the token service's report raising a honeytoken alert")
    assert (alert.batch_id, alert.honeytoken_id) == (token.batch_id, token.honeytoken_id)
    assert alert.source_address == HOST, "the address that presented the credential to the token service"
    await eventually(lambda: reports("honeytoken") == 1 and reports("reported") == 1, what="both reports delivered")
    assert len(await honeytoken_alerts()) == 1, "the wrong secret matches no honeytoken"


async def test_minted_client_credentials_look_like_the_token_services_and_match_by_secret_or_fingerprint(
    client: DeceptionClient,
) -> None:
    minted = await client.create_honeytokens(
        pb.CreateHoneytokensRequest(count=5, kind=pb.HONEYTOKEN_KIND_API_KEY, batch_id="ops-wiki", request_id="m-1")
    )
    assert minted.batch_id == "ops-wiki" and len(minted.honeytokens) == 5
    real_secret = ClientSecretHasher.new_secret()
    for token in minted.honeytokens:
        assert validate_client_id(token.username, "client_id") == token.username
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token.secret) and len(token.secret) == len(real_secret)
        assert len(base64.urlsafe_b64decode(token.secret + "=")) == 32
    replayed = await client.create_honeytokens(
        pb.CreateHoneytokensRequest(count=5, kind=pb.HONEYTOKEN_KIND_API_KEY, batch_id="ops-wiki", request_id="m-1")
    )
    assert replayed == minted

    token = minted.honeytokens[3]
    by_secret = await client.log_recon(
        pb.LogReconRequest(
            source_address="2001:db8::5",
            report=pb.ReconReport(kind=pb.RECON_KIND_CREDENTIAL_PRESENTED, claimed_subject=token.username),
            presented_credential=token.secret,
        )
    )
    by_fingerprint = await client.log_recon(
        pb.LogReconRequest(
            source_address="2001:db8::5",
            report=pb.ReconReport(kind=pb.RECON_KIND_CREDENTIAL_PRESENTED, claimed_subject=token.username),
            presented_credential_fingerprint=credential_fingerprint(token.secret).upper(),
        )
    )
    assert by_secret.honeytoken_matched and by_fingerprint.honeytoken_matched
    assert by_secret.alert.alert_id == by_fingerprint.alert.alert_id and by_fingerprint.alert.count == 2
    assert by_fingerprint.alert.batch_id == "ops-wiki"


async def test_a_honeytoken_tried_on_a_decoy_raises_the_critical_alert_too(client: DeceptionClient) -> None:
    minted = await client.create_honeytokens(pb.CreateHoneytokensRequest(count=1, batch_id="laptop-backup"))
    token = minted.honeytokens[0]
    port = (await decoy_ports(client))["ftp-1"]

    def login() -> None:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            read_line(sock)
            sock.sendall(f"USER {token.username}\r\n".encode())
            read_line(sock)
            sock.sendall(f"PASS {token.secret}\r\n".encode())
            read_line(sock)

    await asyncio.to_thread(login)

    async def raised() -> list[pb.Alert]:
        return list((await client.list_alerts(pb.ListAlertsRequest(min_severity=pb.SEVERITY_CRITICAL))).alerts)

    (alert,) = await eventually(raised)
    assert alert.kind == pb.ALERT_KIND_HONEYTOKEN_USED and alert.batch_id == "laptop-backup"
    assert alert.honeytoken_id == token.honeytoken_id and alert.decoy_ids == ["ftp-1"]
    assert alert.stage == pb.RECON_STAGE_LOGIN_ATTEMPT and alert.source_address == HOST


# --- attribution ------------------------------------------------------------------------------


async def test_attribution_groups_simulated_sessions_of_known_actors(client: DeceptionClient) -> None:
    start = datetime(2025, 3, 3, tzinfo=UTC)
    truth: dict[str, int] = {}
    # Three actors, each from its own network, working its own hours, with its own kind of probe.
    actors = [("192.0.2.", 2), ("198.51.100.", 10), ("203.0.113.", 18)]
    for actor, (network, hour) in enumerate(actors):
        for day in range(4):
            base = start + timedelta(days=day, hours=hour)
            for minute in range(0, 30, 10):
                answer = await client.log_recon(
                    pb.LogReconRequest(
                        source_address=f"{network}{10 + day}",
                        time=_stamp(base + timedelta(minutes=minute)),
                        report=pb.ReconReport(kind=pb.RECON_KIND_ENUMERATION, reporting_service="credits"),
                    )
                )
                truth[answer.session_id] = actor

    result = await client.get_attribution(pb.GetAttributionRequest(start_time=_stamp(start)))

    assert result.session_count == 12 and result.similarity_threshold == pytest.approx(0.4)
    predicted = {sid: index for index, actor in enumerate(result.actors) for sid in actor.session_ids}
    order = sorted(truth)
    assert adjusted_rand_index([truth[s] for s in order], [predicted[s] for s in order]) >= 0.8
    assert all(0 < actor.confidence <= 1 for actor in result.actors)
    assert {tuple(a.source_networks) for a in result.actors} == {(f"{n}0/24",) for n, _ in actors}


def _stamp(moment: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# --- forwarding to compliance, restarts -------------------------------------------------------


async def test_alerts_wait_while_compliance_is_unimplemented_and_are_delivered_after_a_restart(
    store_config: dict[str, str],
    start_service: StartService,
    start_server: StartServer,
    tmp_path: Path,
    compliance: Running,
) -> None:
    config = deception_config(tmp_path, store_config, compliance.address)
    first = await start_service(build, config)
    client = DeceptionClient(first.channel)
    recon = await client.log_recon(
        pb.LogReconRequest(
            source_address="192.0.2.44",
            report=pb.ReconReport(kind=pb.RECON_KIND_REVOKED_TOKEN, reporting_service=TOKENS),
        )
    )
    registry = first.runtime.registry

    await eventually(
        lambda: (registry.get_sample_value("shieldx_deception_alert_forwards_total", {"outcome": "retry"}) or 0) >= 2
    )
    assert registry.get_sample_value("shieldx_deception_alert_forwards_pending") == 1
    assert (await client.list_alerts(pb.ListAlertsRequest())).alerts[0].alert_id == recon.alert.alert_id
    await stop_service(first)

    recorder = RecordingCompliance()  # type: ignore[abstract]  # the base answers the rest UNIMPLEMENTED
    taking = await start_compliance(start_server, tmp_path / "taking", recorder)
    config.endpoints = {"compliance": taking.address}
    second = await start_service(build, config)
    await eventually(lambda: recorder.raised)
    (raised,) = recorder.raised
    assert raised.source == "shieldx.deception.v1.DeceptionService" and raised.category == "reconnaissance"
    assert raised.severity == compliance_pb2.SEVERITY_HIGH and raised.source_address == "192.0.2.44"
    assert raised.request_id == f"deception-{recon.alert.alert_id}-high"
    assert raised.dedup_key == f"deception-alert/{recon.alert.alert_id}"
    assert raised.attributes["session_id"] == recon.session_id and raised.subject == recon.session_id
    await eventually(lambda: second.runtime.registry.get_sample_value("shieldx_deception_alert_forwards_pending") == 0)


async def test_a_restart_keeps_sessions_alerts_selection_state_honeytokens_and_the_fingerprint(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path, compliance: Running
) -> None:
    config = deception_config(tmp_path, store_config, compliance.address)
    first = await start_service(build, config)
    client = DeceptionClient(first.channel)
    ssh_port = (await decoy_ports(client))["ssh-1"]
    await asyncio.to_thread(ssh_banner, ssh_port)
    await eventually(lambda: _at_least(interactions(client), 1))
    recon = await client.log_recon(
        pb.LogReconRequest(source_address=HOST, report=pb.ReconReport(kind=pb.RECON_KIND_FORGED_TOKEN))
    )
    selection = await client.select_decoy(pb.SelectDecoyRequest(seed=11))
    done = await client.select_decoy(pb.SelectDecoyRequest(seed=12))
    await client.submit_feedback(pb.SubmitFeedbackRequest(selection_id=done.selection_id, reward=0.75))
    minted = await client.create_honeytokens(pb.CreateHoneytokensRequest(count=1))
    before = {
        "template": await template(client, "ssh"),
        "session": await client.get_session(pb.GetSessionRequest(session_id=recon.session_id)),
        "alerts": await client.list_alerts(pb.ListAlertsRequest()),
        "graph": await client.get_decoy_graph(pb.GetDecoyGraphRequest()),
        "interactions": await interactions(client),
    }
    await stop_service(first)

    second = await start_service(build, config)
    client = DeceptionClient(second.channel)
    assert await template(client, "ssh") == before["template"]
    assert await client.get_session(pb.GetSessionRequest(session_id=recon.session_id)) == before["session"]
    assert await client.list_alerts(pb.ListAlertsRequest()) == before["alerts"]
    assert await client.get_decoy_graph(pb.GetDecoyGraphRequest()) == before["graph"]
    assert await interactions(client) == before["interactions"]

    # Deduplication goes on where it stopped, a selection made before the restart takes feedback,
    # draws keep counting, and the honeytoken is still recognised.
    again = await client.log_recon(
        pb.LogReconRequest(source_address=HOST, report=pb.ReconReport(kind=pb.RECON_KIND_FORGED_TOKEN))
    )
    assert again.alert.alert_id == recon.alert.alert_id and again.alert.count == recon.alert.count + 1
    assert again.session_id == recon.session_id
    await client.submit_feedback(pb.SubmitFeedbackRequest(selection_id=selection.selection_id, engaged=True))
    assert (await client.select_decoy(pb.SelectDecoyRequest())).draw == 2
    hit = await client.log_recon(
        pb.LogReconRequest(
            source_address="192.0.2.1",
            report=pb.ReconReport(kind=pb.RECON_KIND_CREDENTIAL_PRESENTED),
            presented_credential=minted.honeytokens[0].secret,
        )
    )
    assert hit.honeytoken_matched and hit.alert.batch_id == minted.batch_id
    await stop_service(second)

    # The fingerprint's identity is the installation file: losing it must not silently change it.
    await asyncio.to_thread((tmp_path / "deception-installation.json").unlink)
    with pytest.raises(ConfigError, match="installation"):
        await start_service(build, config)


async def test_activity_older_than_the_retention_period_is_purged_and_honeytokens_stay(
    store_config: dict[str, str], start_service: StartService, tmp_path: Path, compliance: Running
) -> None:
    config = deception_config(
        tmp_path, store_config, compliance.address, retention={"activity_days": 30, "interval_seconds": 0.1}
    )
    running = await start_service(build, config)
    client = DeceptionClient(running.channel)
    minted = await client.create_honeytokens(pb.CreateHoneytokensRequest(count=1))
    old = await client.log_recon(
        pb.LogReconRequest(
            source_address="192.0.2.77",
            time=_stamp(datetime.now(UTC) - timedelta(days=45)),
            report=pb.ReconReport(kind=pb.RECON_KIND_ENUMERATION),
        )
    )
    recent = await client.log_recon(
        pb.LogReconRequest(source_address="192.0.2.78", report=pb.ReconReport(kind=pb.RECON_KIND_ENUMERATION))
    )

    async def purged() -> bool:
        sessions = (await client.list_sessions(pb.ListSessionsRequest())).sessions
        return [s.session_id for s in sessions] == [recent.session_id]

    await eventually(purged)
    alerts = (await client.list_alerts(pb.ListAlertsRequest())).alerts
    assert [a.alert_id for a in alerts] == [recent.alert.alert_id] != [old.alert.alert_id]
    with pytest.raises(ShieldxError) as gone:
        await client.get_session(pb.GetSessionRequest(session_id=old.session_id))
    assert gone.value.code == grpc.StatusCode.NOT_FOUND
    hit = await client.log_recon(
        pb.LogReconRequest(
            source_address="192.0.2.77",
            report=pb.ReconReport(kind=pb.RECON_KIND_CREDENTIAL_PRESENTED),
            presented_credential=minted.honeytokens[0].secret,
        )
    )
    assert hit.honeytoken_matched


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message", "code", "reason", "field"),
    [
        ("get_session", pb.GetSessionRequest(session_id="nope"), "NOT_FOUND", "NOT_FOUND", ""),
        ("get_template", pb.GetTemplateRequest(template_id="telnet"), "NOT_FOUND", "NOT_FOUND", ""),
        ("log_recon", pb.LogReconRequest(source_address=HOST), "INVALID_ARGUMENT", "INVALID_ARGUMENT", "report"),
        (
            "log_recon",
            pb.LogReconRequest(source_address="nowhere", report=pb.ReconReport(kind=pb.RECON_KIND_OTHER)),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "source_address",
        ),
        (
            "log_recon",
            pb.LogReconRequest(
                source_address=HOST,
                report=pb.ReconReport(kind=pb.RECON_KIND_CREDENTIAL_PRESENTED),
                presented_credential_fingerprint="abc",
            ),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "presented_credential_fingerprint",
        ),
        ("list_alerts", pb.ListAlertsRequest(page_size=-1), "INVALID_ARGUMENT", "INVALID_ARGUMENT", "page_size"),
        ("list_interactions", pb.ListInteractionsRequest(page_token="x"), "INVALID_ARGUMENT", "INVALID_ARGUMENT",
         "page_token"),
        ("submit_feedback", pb.SubmitFeedbackRequest(selection_id="sel_0"), "NOT_FOUND", "SELECTION_NOT_FOUND", ""),
        ("submit_feedback", pb.SubmitFeedbackRequest(selection_id="s", reward=1.5), "INVALID_ARGUMENT",
         "INVALID_ARGUMENT", "reward"),
        ("replay_policy", pb.ReplayPolicyRequest(discount=1.5), "INVALID_ARGUMENT", "INVALID_ARGUMENT", "discount"),
        ("get_attribution", pb.GetAttributionRequest(similarity_threshold=-0.5), "INVALID_ARGUMENT",
         "INVALID_ARGUMENT", "similarity_threshold"),
        ("create_honeytokens", pb.CreateHoneytokensRequest(count=1001), "INVALID_ARGUMENT", "INVALID_ARGUMENT",
         "count"),
        ("select_decoy", pb.SelectDecoyRequest(context=pb.AttackerContext(session_id="gone")), "NOT_FOUND",
         "NOT_FOUND", ""),
    ],
)  # fmt: skip
async def test_bad_requests_are_refused_with_the_reason_and_field(
    client: DeceptionClient, call: str, message: Any, code: str, reason: str, field: str
) -> None:
    with pytest.raises(ShieldxError) as caught:
        await getattr(client, call)(message)
    assert caught.value.code == grpc.StatusCode[code] and caught.value.reason == reason
    if field:
        assert field in caught.value.field_violations


async def test_bad_stream_requests_are_refused_before_any_chunk(client: DeceptionClient) -> None:
    for fields, field in [
        ({"count": 10}, "kind"),
        ({"kind": pb.DATASET_KIND_USERS, "count": 0}, "count"),
        ({"kind": pb.DATASET_KIND_USERS, "count": 10, "chunk_size": 100_000}, "chunk_size"),
        ({"kind": pb.DATASET_KIND_TRANSACTIONS, "count": 10, "honeytoken_count": 1}, "honeytoken_count"),
    ]:
        with pytest.raises(ShieldxError) as caught:
            await stream(client, **fields)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in caught.value.field_violations


async def test_the_event_loop_keeps_answering_while_a_large_batch_streams(client: DeceptionClient) -> None:
    latencies: list[float] = []
    streaming = True

    async def ask() -> None:
        while streaming:
            started = time.perf_counter()
            await client.get_decoy_graph(pb.GetDecoyGraphRequest())
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    asker = asyncio.create_task(ask())
    rows = 0
    async for chunk in client.generate_synthetic_data(
        pb.GenerateSyntheticDataRequest(kind=pb.DATASET_KIND_TRANSACTIONS, count=300_000, chunk_size=25_000)
    ):
        rows += chunk.row_count
    streaming = False
    await asker
    assert rows == 300_000 and len(latencies) >= 5
    assert sorted(latencies)[len(latencies) // 2] < 0.25, latencies


async def test_fuzzing_every_rpc_never_yields_internal_or_unknown(running: Running) -> None:
    values = {"source_address": "127.0.0.2", "presented_credential_fingerprint": ""}
    report = await fuzz_service(
        running.channel, pb.DESCRIPTOR.services_by_name["DeceptionService"], rounds=15, values=values
    )
    report.assert_clean()
    report.assert_reaches_logic()
