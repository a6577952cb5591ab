"""Typed client of the deception service (`shieldx.deception.v1.DeceptionService`).

Besides one method per RPC, `report_presented_credential` is how another service (the token
service first) reports a credential it refused: it sends only the credential's fingerprint, and
the deception service raises a CRITICAL alert naming the batch if it is a planted honeytoken.
"""

from __future__ import annotations

import hashlib

from clients.rpc import Metadata, ServerStream, ServiceClient, Unary
from shieldx.deception.v1 import deception_pb2 as pb

FINGERPRINT_TAG = b"shieldx.deception.honeytoken.v1\x00"
"""Domain separation of fingerprints, so they match no other SHA-256 in the mesh."""


def credential_fingerprint(credential: str) -> str:
    """Hex SHA-256 of the tagged credential: what the honeytoken registry keeps, and what a service
    reports instead of a secret it refused (the secret itself never travels)."""
    return hashlib.sha256(FINGERPRINT_TAG + credential.encode("utf-8", "surrogatepass")).hexdigest()


__all__ = ["DeceptionClient", "credential_fingerprint", "report_presented_credential"]


class DeceptionClient(ServiceClient):
    """One async method per RPC of DeceptionService."""

    service = "shieldx.deception.v1.DeceptionService"

    list_templates = Unary("ListTemplates", pb.ListTemplatesRequest, pb.ListTemplatesResponse)
    get_template = Unary("GetTemplate", pb.GetTemplateRequest, pb.GetTemplateResponse)
    list_decoys = Unary("ListDecoys", pb.ListDecoysRequest, pb.ListDecoysResponse)
    list_interactions = Unary("ListInteractions", pb.ListInteractionsRequest, pb.ListInteractionsResponse)
    list_alerts = Unary("ListAlerts", pb.ListAlertsRequest, pb.ListAlertsResponse)
    create_session = Unary("CreateSession", pb.CreateSessionRequest, pb.CreateSessionResponse)
    get_session = Unary("GetSession", pb.GetSessionRequest, pb.GetSessionResponse)
    list_sessions = Unary("ListSessions", pb.ListSessionsRequest, pb.ListSessionsResponse)
    log_recon = Unary("LogRecon", pb.LogReconRequest, pb.LogReconResponse)
    select_decoy = Unary("SelectDecoy", pb.SelectDecoyRequest, pb.SelectDecoyResponse)
    submit_feedback = Unary("SubmitFeedback", pb.SubmitFeedbackRequest, pb.SubmitFeedbackResponse)
    get_decoy_graph = Unary("GetDecoyGraph", pb.GetDecoyGraphRequest, pb.GetDecoyGraphResponse)
    replay_policy = Unary("ReplayPolicy", pb.ReplayPolicyRequest, pb.ReplayPolicyResponse)
    get_attribution = Unary("GetAttribution", pb.GetAttributionRequest, pb.GetAttributionResponse)
    generate_synthetic_data = ServerStream(
        "GenerateSyntheticData", pb.GenerateSyntheticDataRequest, pb.GenerateSyntheticDataResponse
    )
    create_honeytokens = Unary("CreateHoneytokens", pb.CreateHoneytokensRequest, pb.CreateHoneytokensResponse)


async def report_presented_credential(
    client: DeceptionClient,
    *,
    source_address: str,
    claimed_subject: str,
    secret: str,
    reporting_service: str,
    method: str = "",
    detail: str = "",
    request_id: str = "",
    timeout: float | None = None,
    metadata: Metadata = (),
) -> pb.LogReconResponse:
    """Report a credential a caller presented (and the reporting service refused) to the deception service.

    `claimed_subject` is the client id or user it was presented as, `secret` the client secret,
    API key or token; only `credential_fingerprint(secret)` is sent. The answer says whether it
    was a honeytoken (`honeytoken_matched`) and carries the alert it raised or folded into.
    """
    request = pb.LogReconRequest(
        request_id=request_id,
        source_address=source_address,
        report=pb.ReconReport(
            kind=pb.RECON_KIND_CREDENTIAL_PRESENTED,
            reporting_service=reporting_service,
            method=method,
            detail=detail,
            claimed_subject=claimed_subject,
        ),
        presented_credential_fingerprint=credential_fingerprint(secret),
    )
    return await client.log_recon(request, timeout=timeout, metadata=metadata)
