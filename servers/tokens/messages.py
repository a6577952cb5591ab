"""Conversions between the token service's domain records and its protobuf messages."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf import duration_pb2

from servers.mesh.claims import IssuedToken, TokenClaims
from servers.mesh.errors import InvalidArgument
from servers.mesh.timestamps import duration, timestamp
from servers.tokens.domain import Client, ClientKind, MfaProvisioning, TokenSettings
from servers.tokens.keys import KeyRing, KeyState, SigningKeyRecord
from servers.tokens.revocations import Revocation
from shieldx.tokens.v1 import tokens_pb2

# google.protobuf.Duration's documented range (about 10,000 years).
_MAX_DURATION_SECONDS = 315_576_000_000

_KINDS: dict[tokens_pb2.ClientKind.ValueType, ClientKind] = {
    tokens_pb2.CLIENT_KIND_WORKLOAD: ClientKind.WORKLOAD,
    tokens_pb2.CLIENT_KIND_PERSON: ClientKind.PERSON,
}
_KIND_NUMBERS = {kind: number for number, kind in _KINDS.items()}
_KEY_STATES = {KeyState.ACTIVE: tokens_pb2.KEY_STATE_ACTIVE, KeyState.PREVIOUS: tokens_pb2.KEY_STATE_PREVIOUS}


def optional_duration(message: duration_pb2.Duration, present: bool, field: str) -> timedelta | None:
    """A request Duration as a timedelta (None if unset); InvalidArgument(field) outside Duration's range."""
    if not present:
        return None
    seconds, nanos = message.seconds, message.nanos
    if (
        abs(seconds) > _MAX_DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgument(field, "is not a valid google.protobuf.Duration")
    return timedelta(seconds=seconds, microseconds=nanos // 1000)


def client_kind(number: int) -> ClientKind | None:
    """The domain kind of a ClientKind number; None for UNSPECIFIED or an unknown number."""
    return _KINDS.get(tokens_pb2.ClientKind.ValueType(number))


def client_message(client: Client) -> tokens_pb2.Client:
    """A client as the API shows it: never its secret hash or TOTP secret."""
    return tokens_pb2.Client(
        client_id=client.client_id,
        display_name=client.display_name,
        kind=_KIND_NUMBERS[client.kind],
        allowed_scopes=sorted(client.allowed_scopes),
        allowed_audiences=sorted(client.allowed_audiences),
        enabled=client.enabled,
        mfa_enabled=client.mfa_enabled,
        create_time=timestamp(client.create_time),
        update_time=timestamp(client.update_time),
    )


def enrolment_response(
    client: Client, provisioning: MfaProvisioning, settings: TokenSettings
) -> tokens_pb2.EnrollMfaResponse:
    """EnrollMfa's answer: the client and its one-time TOTP provisioning."""
    parameters = settings.totp_parameters
    return tokens_pb2.EnrollMfaResponse(
        client=client_message(client),
        totp_secret=provisioning.secret,
        provisioning_uri=provisioning.provisioning_uri,
        digits=parameters.digits,
        period=duration(timedelta(seconds=parameters.period)),
    )


def issue_response(issued: IssuedToken) -> tokens_pb2.IssueTokenResponse:
    """IssueToken's answer for a freshly minted token."""
    claims = issued.claims
    response = tokens_pb2.IssueTokenResponse(
        access_token=issued.token,
        token_type="Bearer",
        expire_time=timestamp(claims.exp),
        scopes=sorted(claims.scope),
        audience=claims.aud,
        jti=claims.jti,
        kid=issued.kid,
    )
    if claims.iat is not None:
        response.issue_time.CopyFrom(timestamp(claims.iat))
    return response


def introspection_response(claims: TokenClaims | None) -> tokens_pb2.IntrospectTokenResponse:
    """RFC 7662: the claims of an active token; for anything else `active=false` and nothing more."""
    if claims is None:
        return tokens_pb2.IntrospectTokenResponse(active=False)
    response = tokens_pb2.IntrospectTokenResponse(
        active=True,
        scope=claims.scope_string,
        client_id=claims.client_id,
        sub=claims.sub,
        aud=claims.aud,
        iss=claims.iss,
        exp=timestamp(claims.exp),
        jti=claims.jti,
    )
    if claims.iat is not None:
        response.iat.CopyFrom(timestamp(claims.iat))
    if claims.nbf is not None:
        response.nbf.CopyFrom(timestamp(claims.nbf))
    return response


def public_key_message(key: SigningKeyRecord, now: datetime) -> tokens_pb2.PublicKey:
    """A published key: kid, k4.public PASERK, validity window and state."""
    message = tokens_pb2.PublicKey(
        kid=key.kid,
        paserk=key.paserk,
        not_before=timestamp(key.not_before),
        state=_KEY_STATES.get(key.state(now), tokens_pb2.KEY_STATE_UNSPECIFIED),
    )
    if key.not_after is not None:
        message.not_after.CopyFrom(timestamp(key.not_after))
    return message


def rotation_response(ring: KeyRing, now: datetime) -> tokens_pb2.RotateSigningKeyResponse:
    """RotateSigningKey's answer: the new active key and the keys still published besides it."""
    active = ring.active
    return tokens_pb2.RotateSigningKeyResponse(
        active_key=public_key_message(active, now),
        previous_keys=[public_key_message(key, now) for key in ring.published(now) if key.kid != active.kid],
    )


def revocation_message(revocation: Revocation) -> tokens_pb2.Revocation:
    """One revocation of the WatchRevocations stream."""
    return tokens_pb2.Revocation(
        sequence=revocation.sequence,
        jti=revocation.jti,
        expire_time=timestamp(revocation.expire_time),
        revoke_time=timestamp(revocation.revoke_time),
    )
