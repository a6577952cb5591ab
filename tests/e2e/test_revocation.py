"""A token revoked at the token service is refused by another server process within a second,
and stays refused after that server restarts (real processes, real tokens, bootstrap credentials)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from clients.credentials import CredentialsFile
from shieldx.compliance.v1 import compliance_pb2, compliance_pb2_grpc
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc
from tests.support.processes import ServerProcess


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return ""
    from google.rpc import error_details_pb2

    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


# Past authentication the compliance service answers the call itself: OK, or NOT_IMPLEMENTED while
# its servicer is still to come. Any other code (UNAVAILABLE, PERMISSION_DENIED, ...) is not acceptance.
ACCEPTED = {(grpc.StatusCode.OK, ""), (grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED")}
REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")


def _call_compliance(channel: grpc.Channel, token: str) -> tuple[grpc.StatusCode, str]:
    stub = compliance_pb2_grpc.ComplianceServiceStub(channel)
    try:
        stub.ListFrameworks(
            compliance_pb2.ListFrameworksRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=5
        )
    except grpc.RpcError as error:
        return error.code(), _reason(error)  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


@pytest.fixture
def mesh(tmp_path: Path) -> tuple[ServerProcess, ServerProcess, Path]:
    shared = tmp_path / "state"
    auth = {"SHIELDX_AUTH__ENABLED": "true", "SHIELDX_DATA_DIR": str(shared)}
    tokens = ServerProcess("servers.tokens", tmp_path, env={**auth, "SHIELDX_TOKENS__BOOTSTRAP": "true"})
    compliance = ServerProcess("servers.compliance", tmp_path, env=auth)
    peers = f"tokens={tokens.address}"
    tokens.env["SHIELDX_ENDPOINTS"] = compliance.env["SHIELDX_ENDPOINTS"] = peers
    try:
        tokens.start()
        compliance.start()
        yield tokens, compliance, shared
    finally:
        compliance.stop()
        tokens.stop()


def test_revocation_reaches_another_process_within_a_second_and_survives_its_restart(
    mesh: tuple[ServerProcess, ServerProcess, Path],
) -> None:
    tokens, compliance, shared = mesh
    credentials = CredentialsFile.load(shared / "credentials")
    admin = credentials.clients["admin"]
    assert (shared / "credentials").stat().st_mode & 0o777 == 0o600
    token_channel = grpc.insecure_channel(tokens.address)
    token_service = tokens_pb2_grpc.TokenServiceStub(token_channel)
    with token_channel, grpc.insecure_channel(compliance.address) as channel:

        def issue(scopes: list[str]) -> str:
            reply = token_service.IssueToken(
                tokens_pb2.IssueTokenRequest(
                    client_id=admin.client_id, client_secret=admin.client_secret, scopes=scopes, audience="shieldx"
                ),
                timeout=10,
            )
            return str(reply.access_token)

        victim = issue(["compliance.read"])
        operator = issue(["tokens.write"])
        assert _call_compliance(channel, victim) in ACCEPTED, "the token is accepted before it is revoked"

        token_service.RevokeToken(
            tokens_pb2.RevokeTokenRequest(token=victim), metadata=[("authorization", f"Bearer {operator}")], timeout=5
        )
        revoked_at = time.monotonic()
        while (answer := _call_compliance(channel, victim)) != REVOKED:
            assert answer in ACCEPTED, f"before the revocation arrives the token is accepted, not {answer}"
            assert time.monotonic() - revoked_at < 5, "the revocation never arrived"
            time.sleep(0.005)
        took = time.monotonic() - revoked_at
        print(f"revocation refused by another process after {took * 1000:.0f} ms")
        assert took < 1.0

        compliance.stop()
        compliance.start()
        with grpc.insecure_channel(compliance.address) as restarted:
            assert _call_compliance(restarted, victim) == REVOKED
            fresh = issue(["compliance.read"])
            assert _call_compliance(restarted, fresh) in ACCEPTED
