"""A honeytoken planted by the deception service, presented to the token service, raises the
alert naming its batch (real processes, auth on, bootstrap credentials)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from clients.credentials import CredentialsFile
from shieldx.deception.v1 import deception_pb2, deception_pb2_grpc
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc
from tests.support.processes import ServerProcess


@pytest.fixture
def mesh(tmp_path: Path) -> tuple[ServerProcess, ServerProcess, Path]:
    shared = tmp_path / "state"
    auth = {"SHIELDX_AUTH__ENABLED": "true", "SHIELDX_DATA_DIR": str(shared)}
    tokens = ServerProcess("servers.tokens", tmp_path, env={**auth, "SHIELDX_TOKENS__BOOTSTRAP": "true"})
    deception = ServerProcess("servers.deception", tmp_path, env=auth)
    peers = f"tokens={tokens.address},deception={deception.address}"
    tokens.env["SHIELDX_ENDPOINTS"] = deception.env["SHIELDX_ENDPOINTS"] = peers
    try:
        tokens.start()
        deception.start()
        yield tokens, deception, shared
    finally:
        deception.stop()
        tokens.stop()


def test_a_planted_honeytoken_presented_to_the_token_service_raises_the_alert(
    mesh: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    tokens, deception, shared = mesh
    admin = CredentialsFile.load(shared / "credentials").clients["admin"]
    with grpc.insecure_channel(tokens.address) as token_channel, grpc.insecure_channel(deception.address) as channel:
        token_service = tokens_pb2_grpc.TokenServiceStub(token_channel)
        operator = token_service.IssueToken(
            tokens_pb2.IssueTokenRequest(
                client_id=admin.client_id,
                client_secret=admin.client_secret,
                scopes=["deception.write", "deception.read"],
                audience="shieldx",
            ),
            timeout=10,
        ).access_token
        bearer = [("authorization", f"Bearer {operator}")]
        decoys = deception_pb2_grpc.DeceptionServiceStub(channel)
        planted = decoys.CreateHoneytokens(
            deception_pb2.CreateHoneytokensRequest(
                count=1, kind=deception_pb2.HONEYTOKEN_KIND_API_KEY, batch_id="leaked-export-7"
            ),
            metadata=bearer,
            timeout=10,
        ).honeytokens[0]

        with pytest.raises(grpc.RpcError) as refused:
            token_service.IssueToken(
                tokens_pb2.IssueTokenRequest(
                    client_id=planted.username, client_secret=planted.secret, audience="shieldx"
                ),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]

        deadline = time.monotonic() + 15
        alert = None
        while alert is None and time.monotonic() < deadline:
            alerts = decoys.ListAlerts(deception_pb2.ListAlertsRequest(), metadata=bearer, timeout=10).alerts
            alert = next((a for a in alerts if a.batch_id == "leaked-export-7"), None)
            time.sleep(0.2)
    assert alert is not None, "the token service reported the credential and deception matched it"
    assert alert.severity == deception_pb2.SEVERITY_CRITICAL
    assert alert.honeytoken_id == planted.honeytoken_id
