"""Typed client of the token service (`shieldx.tokens.v1.TokenService`)."""

from __future__ import annotations

from clients.rpc import ServerStream, ServiceClient, Unary
from shieldx.tokens.v1 import tokens_pb2 as pb


class TokenClient(ServiceClient):
    """Clients, tokens, public keys and the revocation stream of the token service."""

    service = "shieldx.tokens.v1.TokenService"

    create_client = Unary("CreateClient", pb.CreateClientRequest, pb.CreateClientResponse)
    get_client = Unary("GetClient", pb.GetClientRequest, pb.GetClientResponse)
    list_clients = Unary("ListClients", pb.ListClientsRequest, pb.ListClientsResponse)
    update_client = Unary("UpdateClient", pb.UpdateClientRequest, pb.UpdateClientResponse)
    delete_client = Unary("DeleteClient", pb.DeleteClientRequest, pb.DeleteClientResponse)
    enroll_mfa = Unary("EnrollMfa", pb.EnrollMfaRequest, pb.EnrollMfaResponse)
    issue_token = Unary("IssueToken", pb.IssueTokenRequest, pb.IssueTokenResponse)
    introspect_token = Unary("IntrospectToken", pb.IntrospectTokenRequest, pb.IntrospectTokenResponse)
    revoke_token = Unary("RevokeToken", pb.RevokeTokenRequest, pb.RevokeTokenResponse)
    list_public_keys = Unary("ListPublicKeys", pb.ListPublicKeysRequest, pb.ListPublicKeysResponse)
    rotate_signing_key = Unary("RotateSigningKey", pb.RotateSigningKeyRequest, pb.RotateSigningKeyResponse)
    watch_revocations = ServerStream("WatchRevocations", pb.WatchRevocationsRequest, pb.WatchRevocationsResponse)
