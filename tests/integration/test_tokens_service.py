"""The token service on a real in-process server, on SQLite and PostgreSQL: clients, tokens,
introspection, revocation and its stream, key rotation, restarts, bootstrap, auth and fuzzing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nacl.signing
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.credentials import CredentialsFile
from clients.errors import ShieldxError
from clients.tokens import TokenClient
from servers.mesh import paseto
from servers.mesh.claims import TokenSigner, footer_for
from servers.mesh.errors import Unauthenticated
from servers.mesh.verifier import TokenVerifier, TrustedKey
from servers.tokens import totp
from servers.tokens.authority import TokenAuthority
from servers.tokens.bootstrap import WORKLOAD_SCOPES, contract_scopes
from servers.tokens.service import build
from shieldx.deception.v1 import deception_pb2, deception_pb2_grpc
from shieldx.tokens.v1 import tokens_pb2 as pb
from tests.conftest import Running, StartService, stop_service, test_config
from tests.support import rawstore
from tests.support.fuzz import fuzz_service
from tests.support.polling import eventually

FAST_ARGON2 = {"argon2_opslimit": 1, "argon2_memlimit": 64 * 1024}
Metadata = tuple[tuple[str, str], ...]


def tokens_config(tmp_path: Path, store_config: dict[str, str], *, auth: bool = False, **settings: Any) -> Any:
    """A token service config on the given store, with cheap Argon2id and bootstrap on unless told."""
    return test_config(
        tmp_path,
        service="tokens",
        auth__enabled=auth,
        settings={**FAST_ARGON2, "bootstrap": True, **settings},
        **store_config,
    )


# Fixture order matters: the store (a PostgreSQL schema dropped at teardown) is set up before
# `start_service`, so the service is stopped before its schema is dropped.
@pytest.fixture
def config(tmp_path: Path, store_config: dict[str, str]) -> Any:
    return tokens_config(tmp_path, store_config)


@pytest.fixture
async def running(config: Any, start_service: StartService) -> Running:
    return await start_service(build, config)


def credentials(config: Any) -> CredentialsFile:
    return CredentialsFile.load(Path(config.data_dir) / "credentials")


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def issue(client: TokenClient, client_id: str, secret: str, **fields: Any) -> pb.IssueTokenResponse:
    return await client.issue_token(pb.IssueTokenRequest(client_id=client_id, client_secret=secret, **fields))


async def admin_token(client: TokenClient, config: Any) -> str:
    admin = credentials(config).clients["admin"]
    return (await issue(client, admin.client_id, admin.client_secret)).access_token


async def refusal(call: Awaitable[Any]) -> ShieldxError:
    with pytest.raises(ShieldxError) as caught:
        await call
    return caught.value


async def create(client: TokenClient, client_id: str, **fields: Any) -> pb.CreateClientResponse:
    fields.setdefault("kind", pb.CLIENT_KIND_WORKLOAD)
    fields.setdefault("enabled", True)
    request_id = fields.pop("request_id", "")
    return await client.create_client(
        pb.CreateClientRequest(client_id=client_id, client=pb.Client(**fields), request_id=request_id)
    )


def authority_of(running: Running) -> TokenAuthority:
    assert running.service is not None
    return running.service.mounts[0].servicer.authority  # type: ignore[no-any-return]


def service_signer(running: Running, kid: str, *, clock: Callable[[], float] = time.time) -> TokenSigner:
    """A signer holding the service's own active secret key."""
    active = authority_of(running).ring.active
    assert active.kid == kid and active.secret_key is not None
    return TokenSigner(nacl.signing.SigningKey(active.secret_key[:32]), issuer="shieldx-tokens", clock=clock)


async def sealed_names(running: Running) -> list[str]:
    """Names of the secrets the service keeps sealed in its database."""
    rows = await authority_of(running).store.database.fetchall("SELECT name FROM sealed_secrets ORDER BY name")
    return [row["name"] for row in rows]


async def active_kid(client: TokenClient) -> str:
    keys = (await client.list_public_keys(pb.ListPublicKeysRequest())).keys
    return next(k.kid for k in keys if k.state == pb.KEY_STATE_ACTIVE)


def verifier_from(keys: pb.ListPublicKeysResponse, clock: Callable[[], float]) -> TokenVerifier:
    """What another server builds from ListPublicKeys."""

    def moment(ts: Any) -> datetime | None:
        return datetime.fromtimestamp(ts.ToSeconds(), UTC) if ts.ByteSize() else None

    trusted = [
        TrustedKey.from_paserk(k.paserk, kid=k.kid, not_before=moment(k.not_before), not_after=moment(k.not_after))
        for k in keys.keys
    ]
    return TokenVerifier(audience="shieldx", keys=trusted, issuer="shieldx-tokens", leeway=timedelta(0), clock=clock)


# --- clients -----------------------------------------------------------------------------------


async def test_client_secret_is_shown_once_and_a_disabled_client_gets_no_token(running: Running) -> None:
    client = TokenClient(running.channel)
    created = await create(client, "billing", allowed_scopes=["credits.read", "credits.write"], request_id="c-1")
    secret = created.client_secret
    assert len(secret) >= 43 and created.client.allowed_audiences == ["shieldx"]
    again = await create(client, "billing", allowed_scopes=["credits.read", "credits.write"], request_id="c-1")
    assert again.client_secret == secret, "a retry within the window gets the same answer"
    shown = await client.get_client(pb.GetClientRequest(client_id="billing"))
    assert secret.encode() not in shown.SerializeToString()
    assert shown.client.kind == pb.CLIENT_KIND_WORKLOAD and shown.client.enabled

    duplicate = await refusal(create(client, "billing"))
    assert (duplicate.code, duplicate.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    assert (await issue(client, "billing", secret)).access_token.startswith("v4.public.")
    for client_id, wrong in (("billing", secret + "x"), ("nobody", secret)):
        error = await refusal(issue(client, client_id, wrong))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

    await client.update_client(
        pb.UpdateClientRequest(
            client=pb.Client(client_id="billing", enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    disabled = await refusal(issue(client, "billing", secret))
    assert (disabled.code, disabled.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CLIENT_DISABLED")

    await client.delete_client(pb.DeleteClientRequest(client_id="billing"))
    missing = await refusal(client.get_client(pb.GetClientRequest(client_id="billing")))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert (await refusal(issue(client, "billing", secret))).reason == "INVALID_CLIENT"


async def test_clients_are_listed_in_pages_ordered_by_id(running: Running) -> None:
    client = TokenClient(running.channel)
    for name in ("zeta", "alpha", "mid"):
        await create(client, name, allowed_scopes=["credits.read"])
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_clients(pb.ListClientsRequest(page_size=2, page_token=token))
        assert len(page.clients) <= 2
        seen += [c.client_id for c in page.clients]
        token = page.next_page_token
        if not token:
            break
    expected = sorted({"admin", *WORKLOAD_SCOPES, "zeta", "alpha", "mid"})
    assert seen == expected


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"client_id": "Bad Id", "client": pb.Client(kind=pb.CLIENT_KIND_WORKLOAD)}, "client_id"),
        ({"client_id": "ok", "client": pb.Client()}, "client.kind"),
        (
            {"client_id": "ok", "client": pb.Client(kind=pb.CLIENT_KIND_PERSON, allowed_scopes=["no spaces allowed"])},
            "client.allowed_scopes",
        ),
        (
            {"client_id": "ok", "client": pb.Client(kind=pb.CLIENT_KIND_WORKLOAD, display_name="\x00")},
            "client.display_name",
        ),
    ],
)
async def test_malformed_clients_name_the_field(running: Running, request_fields: dict[str, Any], field: str) -> None:
    error = await refusal(TokenClient(running.channel).create_client(pb.CreateClientRequest(**request_fields)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.field_violations


async def test_one_time_secrets_leave_stored_replays_after_the_window(
    store_config: dict[str, str], tmp_path: Path, start_service: StartService
) -> None:
    config = tokens_config(tmp_path, store_config, secret_replay_seconds=0.3, maintenance_interval_seconds=0.1)
    client = TokenClient((await start_service(build, config)).channel)
    created = await create(client, "svc", allowed_scopes=["credits.read"], request_id="once")
    bob = (await create(client, "bob", kind=pb.CLIENT_KIND_PERSON, allowed_scopes=["credits.read"])).client_secret
    enrolled = await client.enroll_mfa(pb.EnrollMfaRequest(client_id="bob", request_id="mfa-once"))
    assert created.client_secret and enrolled.totp_secret

    async def scrubbed() -> bool:
        replay = await create(client, "svc", allowed_scopes=["credits.read"], request_id="once")
        mfa = await client.enroll_mfa(pb.EnrollMfaRequest(client_id="bob", request_id="mfa-once"))
        return not replay.client_secret and not mfa.totp_secret  # each window ends 0.3 s after its own answer

    await eventually(scrubbed)
    replay = await create(client, "svc", allowed_scopes=["credits.read"], request_id="once")
    assert replay.client == created.client, "the rest of the answer is still replayed"
    mfa_replay = await client.enroll_mfa(pb.EnrollMfaRequest(client_id="bob", request_id="mfa-once"))
    assert not mfa_replay.totp_secret and not mfa_replay.provisioning_uri and mfa_replay.client.mfa_enabled
    # The replay did not enrol again: codes of the first secret still work.
    code = totp.code_at(totp.decode_secret(enrolled.totp_secret), time.time())
    assert (await issue(client, "bob", bob, totp_code=code)).access_token


# --- IssueToken ----------------------------------------------------------------------------------


async def test_issue_token_grants_only_what_the_client_may_have(running: Running) -> None:
    client = TokenClient(running.channel)
    secret = (
        await create(
            client,
            "reporter",
            allowed_scopes=["credits.read", "compliance.read"],
            allowed_audiences=["shieldx", "partners"],
        )
    ).client_secret

    granted = await issue(client, "reporter", secret, scopes=["credits.read"], audience="shieldx")
    assert list(granted.scopes) == ["credits.read"] and granted.audience == "shieldx"
    assert granted.token_type == "Bearer" and granted.kid == await active_kid(client)
    assert granted.expire_time.ToSeconds() - granted.issue_time.ToSeconds() == 900, "the default ttl"

    short = await issue(client, "reporter", secret, audience="partners", ttl=duration_pb2.Duration(seconds=60))
    assert set(short.scopes) == {"credits.read", "compliance.read"}, "no scopes asks for all allowed"
    assert short.expire_time.ToSeconds() - short.issue_time.ToSeconds() == 60

    cases: list[tuple[dict[str, Any], str, str]] = [
        (
            {"scopes": ["credits.read", "credits.write"], "audience": "shieldx"},
            "PERMISSION_DENIED",
            "SCOPE_NOT_ALLOWED",
        ),
        ({"audience": "elsewhere"}, "PERMISSION_DENIED", "AUDIENCE_NOT_ALLOWED"),
        ({}, "INVALID_ARGUMENT", "AUDIENCE_REQUIRED"),
        ({"audience": "shieldx", "ttl": duration_pb2.Duration(seconds=3601)}, "INVALID_ARGUMENT", "TTL_TOO_LONG"),
        ({"audience": "shieldx", "ttl": duration_pb2.Duration(seconds=2**62)}, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ]
    for fields, code, reason in cases:
        error = await refusal(issue(client, "reporter", secret, **fields))
        assert (error.code.name, error.reason) == (code, reason), fields


async def test_every_refused_credential_costs_one_argon2_verification(running: Running) -> None:
    """Client-id enumeration by timing: a known id must not answer before the work an unknown one costs."""
    client = TokenClient(running.channel)
    secret = (await create(client, "payroll")).client_secret
    await create(client, "retired", enabled=False)
    await issue(client, "payroll", secret)  # now remembered: a wrong guess must still pay in full
    hasher = running.service.mounts[0].servicer.hasher if running.service else None
    assert hasher is not None
    for client_id, presented in [
        ("payroll", secret + "x"),
        ("payroll", "x" * 300),
        ("retired", secret),
        ("nobody", secret),
        ("nobody", "x" * 300),
        ("Not An Id!", secret),
    ]:
        before = hasher.verifications
        error = await refusal(issue(client, client_id, presented))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"), client_id
        assert hasher.verifications == before + 1, (client_id, len(presented))


async def test_people_with_mfa_present_a_fresh_totp_code(running: Running) -> None:
    client = TokenClient(running.channel)
    secret = (await create(client, "alice", kind=pb.CLIENT_KIND_PERSON, allowed_scopes=["tokens.admin"])).client_secret
    assert (await issue(client, "alice", secret)).access_token, "no code needed before enrolment"
    enrolled = await client.enroll_mfa(pb.EnrollMfaRequest(client_id="alice"))
    assert enrolled.client.mfa_enabled and enrolled.digits == 6 and enrolled.period.seconds == 30
    assert enrolled.provisioning_uri.startswith("otpauth://totp/ShieldX:alice?")
    totp_secret = totp.decode_secret(enrolled.totp_secret)

    assert (await refusal(issue(client, "alice", secret))).reason == "MFA_REQUIRED"
    code = totp.code_at(totp_secret, time.time())
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert (await refusal(issue(client, "alice", secret, totp_code=wrong))).reason == "MFA_INVALID"

    # Two requests with the same code at once: exactly one is served, the other sees it spent.
    outcomes = await asyncio.gather(
        issue(client, "alice", secret, totp_code=code),
        issue(client, "alice", secret, totp_code=code),
        return_exceptions=True,
    )
    served = [o for o in outcomes if isinstance(o, pb.IssueTokenResponse)]
    refused = [o for o in outcomes if isinstance(o, ShieldxError)]
    assert len(served) == 1 and [e.reason for e in refused] == ["MFA_REPLAYED"]
    assert (await refusal(issue(client, "alice", secret, totp_code=code))).reason == "MFA_REPLAYED"

    await client.update_client(
        pb.UpdateClientRequest(
            client=pb.Client(client_id="alice", mfa_enabled=False),
            update_mask=field_mask_pb2.FieldMask(paths=["mfa_enabled"]),
        )
    )
    assert (await issue(client, "alice", secret)).access_token

    workload = await refusal(client.enroll_mfa(pb.EnrollMfaRequest(client_id="credits")))
    assert (workload.code, workload.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MFA_NOT_FOR_WORKLOADS")


class RecordingDeception(deception_pb2_grpc.DeceptionServiceServicer):
    """Stands in for the deception service's LogRecon only to see what the token service reports."""

    def __init__(self) -> None:
        self.reports: list[deception_pb2.LogReconRequest] = []

    async def LogRecon(self, request: deception_pb2.LogReconRequest, context: Any) -> deception_pb2.LogReconResponse:
        self.reports.append(request)
        return deception_pb2.LogReconResponse()


async def test_wrong_totp_codes_lock_a_person_out_with_an_audit_event_and_a_report_to_deception(
    store_config: dict[str, str], tmp_path: Path, start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    deception = RecordingDeception()
    fake = grpc.aio.server()
    deception_pb2_grpc.add_DeceptionServiceServicer_to_server(deception, fake)
    port = fake.add_insecure_port("127.0.0.1:0")
    await fake.start()
    config = tokens_config(tmp_path, store_config)
    config.endpoints = {"deception": f"127.0.0.1:{port}"}
    running = await start_service(build, config)
    client = TokenClient(running.channel)
    secret = (await create(client, "bob", kind=pb.CLIENT_KIND_PERSON, allowed_scopes=["tokens.read"])).client_secret
    totp_secret = totp.decode_secret((await client.enroll_mfa(pb.EnrollMfaRequest(client_id="bob"))).totp_secret)

    def right() -> str:
        return totp.code_at(totp_secret, time.time())

    def wrong() -> str:
        return f"{(int(right()) + 500_000) % 1_000_000:06d}"

    # Wrong codes below the threshold, then a right one: the run starts over.
    for _ in range(4):
        assert (await refusal(issue(client, "bob", secret, totp_code=wrong()))).reason == "MFA_INVALID"
    assert (await issue(client, "bob", secret, totp_code=right())).access_token
    caplog.clear()
    for _ in range(4):
        assert (await refusal(issue(client, "bob", secret, totp_code=wrong()))).reason == "MFA_INVALID"
    assert not [r for r in caplog.records if "locked out" in r.getMessage()], "four wrong codes lock nobody"

    assert (await refusal(issue(client, "bob", secret, totp_code=wrong()))).reason == "MFA_INVALID"
    locked = await refusal(issue(client, "bob", secret, totp_code=wrong()))
    assert (locked.code, locked.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MFA_LOCKED")
    assert "locked_until" in locked.metadata
    # The next step's code (within the drift window, never used) would be accepted without the lock.
    unused = totp.code_at(totp_secret, time.time() + 30)
    assert (await refusal(issue(client, "bob", secret, totp_code=unused))).reason == "MFA_LOCKED", "even a right code"
    assert (await refusal(issue(client, "bob", "not-the-secret", totp_code=right()))).reason == "INVALID_CLIENT"

    audit = [r for r in caplog.records if "locked out" in r.getMessage()]
    assert len(audit) == 1 and getattr(audit[0], "subject", "") == "bob"
    await eventually(lambda: any(r.report.claimed_subject == "bob" for r in deception.reports), timeout=10)
    reported = next(r for r in deception.reports if r.report.claimed_subject == "bob")
    assert "TOTP lockout" in reported.report.detail
    await fake.stop(None)


# --- introspection and revocation ----------------------------------------------------------------


async def test_introspection_shows_claims_only_for_active_tokens(running: Running, config: Any) -> None:
    client = TokenClient(running.channel)
    token = await admin_token(client, config)
    shown = await client.introspect_token(pb.IntrospectTokenRequest(token=token))
    assert shown.active and shown.client_id == "admin" and shown.sub == "admin"
    assert shown.aud == "shieldx" and shown.iss == "shieldx-tokens" and shown.jti
    assert set(shown.scope.split()) == contract_scopes()
    assert shown.exp.ToSeconds() - shown.iat.ToSeconds() == 900 and shown.nbf == shown.iat

    kid = await active_kid(client)
    expired = service_signer(running, kid, clock=lambda: time.time() - 7200).mint(
        audience="shieldx", ttl=timedelta(hours=1)
    )
    forged = TokenSigner(nacl.signing.SigningKey.generate(), issuer="shieldx-tokens").mint(
        audience="shieldx", ttl=timedelta(hours=1)
    )
    revoked = await admin_token(client, config)
    await client.revoke_token(pb.RevokeTokenRequest(token=revoked))
    for inactive in (expired.token, forged.token, revoked, "garbage", token[:-2], "v4.public." + "A" * 90):
        answer = await client.introspect_token(pb.IntrospectTokenRequest(token=inactive))
        assert answer == pb.IntrospectTokenResponse(active=False), "nothing but active=false"
    empty = await refusal(client.introspect_token(pb.IntrospectTokenRequest()))
    assert "token" in empty.field_violations


async def test_revocation_by_token_or_jti_always_succeeds(running: Running, config: Any) -> None:
    client = TokenClient(running.channel)
    by_token = await admin_token(client, config)
    other = await issue(client, "admin", credentials(config).clients["admin"].client_secret)
    await client.revoke_token(pb.RevokeTokenRequest(token=by_token, request_id="rev-1"))
    await client.revoke_token(pb.RevokeTokenRequest(token=by_token, request_id="rev-1"))
    await client.revoke_token(pb.RevokeTokenRequest(token=by_token))
    await client.revoke_token(pb.RevokeTokenRequest(jti=other.jti))
    await client.revoke_token(pb.RevokeTokenRequest(jti="never-issued"))
    await client.revoke_token(pb.RevokeTokenRequest(token="not a token at all"))
    for token in (by_token, other.access_token):
        assert not (await client.introspect_token(pb.IntrospectTokenRequest(token=token))).active
        with pytest.raises(Unauthenticated) as caught:
            running.runtime.verifier.verify(token)  # type: ignore[union-attr]
        assert caught.value.reason == "TOKEN_REVOKED"
    missing = await refusal(client.revoke_token(pb.RevokeTokenRequest()))
    assert missing.code == grpc.StatusCode.INVALID_ARGUMENT
    recorded = [r.jti async for r in revocations(client, 0)]
    assert recorded == [_jti(by_token), other.jti, "never-issued"], "each jti once, in order"


def _jti(token: str) -> str:
    payload = paseto.b64url_decode(token.split(".")[2])[: -paseto.SIGNATURE_SIZE]
    return str(json.loads(payload)["jti"])


async def revocations(client: TokenClient, after: int) -> AsyncIterator[pb.Revocation]:
    """The backlog of a watch from `after`, up to the caught_up marker."""
    async for message in client.watch_revocations(pb.WatchRevocationsRequest(after_sequence=after)):
        for revocation in message.revocations:
            yield revocation
        if message.caught_up:
            return


async def watch_until_caught_up(
    client: TokenClient, after: int
) -> tuple[list[pb.WatchRevocationsResponse], AsyncIterator[pb.WatchRevocationsResponse]]:
    stream = aiter(client.watch_revocations(pb.WatchRevocationsRequest(after_sequence=after)))
    messages: list[pb.WatchRevocationsResponse] = []
    while not messages or not messages[-1].caught_up:
        messages.append(await asyncio.wait_for(anext(stream), 5))
    return messages, stream


async def test_watch_resumes_after_a_sequence_then_streams_new_revocations_at_once(running: Running) -> None:
    client = TokenClient(running.channel)
    for jti in ("j1", "j2", "j3"):
        await client.revoke_token(pb.RevokeTokenRequest(jti=jti))

    everything, stream = await watch_until_caught_up(client, 0)
    assert [(r.sequence, r.jti) for m in everything for r in m.revocations] == [(1, "j1"), (2, "j2"), (3, "j3")]
    marker = everything[-1]
    assert marker.caught_up and not marker.revocations and not marker.reset
    assert [k.kid for k in marker.keys.keys] == [await active_kid(client)], "the marker carries the keys"
    assert not any(m.reset for m in everything)

    resumed, _ = await watch_until_caught_up(client, 2)
    assert [r.jti for m in resumed for r in m.revocations] == ["j3"]
    ahead, _ = await watch_until_caught_up(client, 99)
    assert ahead[0].reset and [r.jti for m in ahead for r in m.revocations] == ["j1", "j2", "j3"]
    assert sum(m.reset for m in ahead) == 1

    await client.revoke_token(pb.RevokeTokenRequest(jti="live"))
    live = await asyncio.wait_for(anext(stream), 20)  # the next message on the open stream (a hang guard, no speed)
    assert [(r.sequence, r.jti) for r in live.revocations] == [(4, "live")] and not live.reset


async def test_watchers_get_the_new_key_set_at_once_after_a_rotation(running: Running) -> None:
    client = TokenClient(running.channel)
    first = await active_kid(client)
    _, stream = await watch_until_caught_up(client, 0)

    await client.rotate_signing_key(pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=3600)))
    overlapping = await asyncio.wait_for(anext(stream), 5)
    second = await active_kid(client)
    assert overlapping.HasField("keys") and not overlapping.revocations
    assert {(k.kid, k.state) for k in overlapping.keys.keys} == {
        (first, pb.KEY_STATE_PREVIOUS),
        (second, pb.KEY_STATE_ACTIVE),
    }

    await client.rotate_signing_key(pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=0)))
    cut_off = await asyncio.wait_for(anext(stream), 5)
    third = await active_kid(client)
    assert [k.kid for k in cut_off.keys.keys if k.state == pb.KEY_STATE_ACTIVE] == [third]
    assert second not in {k.kid for k in cut_off.keys.keys}, "a key cut off with no overlap is published no more"

    await client.revoke_token(pb.RevokeTokenRequest(jti="after"))
    revoked = await asyncio.wait_for(anext(stream), 5)
    assert [r.jti for r in revoked.revocations] == ["after"] and not revoked.HasField("keys")


async def test_purged_revocations_keep_sequences_and_reset_watchers_behind_them(
    store_config: dict[str, str], tmp_path: Path, start_service: StartService
) -> None:
    config = tokens_config(tmp_path, store_config, leeway_seconds=0, maintenance_interval_seconds=0.1)
    client = TokenClient((await start_service(build, config)).channel)
    admin = credentials(config).clients["admin"]
    short = await issue(client, admin.client_id, admin.client_secret, ttl=duration_pb2.Duration(seconds=1))
    await client.revoke_token(pb.RevokeTokenRequest(jti="kept-1"))
    await client.revoke_token(pb.RevokeTokenRequest(token=short.access_token))
    await client.revoke_token(pb.RevokeTokenRequest(jti="kept-3"))

    async def purged() -> bool:
        return [r.jti async for r in revocations(client, 0)] == ["kept-1", "kept-3"]

    await eventually(purged)
    behind, _ = await watch_until_caught_up(client, 1)
    assert behind[0].reset and [r.sequence for m in behind for r in m.revocations] == [1, 3]
    level, _ = await watch_until_caught_up(client, 2)
    assert not any(m.reset for m in level) and [r.sequence for m in level for r in m.revocations] == [3]
    await client.revoke_token(pb.RevokeTokenRequest(jti="after-purge"))
    assert [r.sequence async for r in revocations(client, 3)] == [4], "sequences are never reused"


# --- keys ------------------------------------------------------------------------------------


async def test_rotation_keeps_old_tokens_valid_until_the_overlap_ends(running: Running, config: Any) -> None:
    client = TokenClient(running.channel)
    old_kid = await active_kid(client)
    old = await issue(client, "admin", credentials(config).clients["admin"].client_secret)
    rotated = await client.rotate_signing_key(
        pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=600), request_id="rot-1")
    )
    replay = await client.rotate_signing_key(
        pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=600), request_id="rot-1")
    )
    assert replay == rotated, "a retried rotation does not rotate again"
    new_kid = rotated.active_key.kid
    assert new_kid != old_kid and [k.kid for k in rotated.previous_keys] == [old_kid]
    overlap_end = rotated.previous_keys[0].not_after.ToSeconds()
    assert abs(overlap_end - (time.time() + 600)) < 5

    published = await client.list_public_keys(pb.ListPublicKeysRequest())
    assert [(k.kid, k.state) for k in published.keys] == [
        (old_kid, pb.KEY_STATE_PREVIOUS),
        (new_kid, pb.KEY_STATE_ACTIVE),
    ]
    assert not published.keys[1].HasField("not_after")
    first_page = await client.list_public_keys(pb.ListPublicKeysRequest(page_size=1))
    second_page = await client.list_public_keys(
        pb.ListPublicKeysRequest(page_size=1, page_token=first_page.next_page_token)
    )
    assert [k.kid for k in (*first_page.keys, *second_page.keys)] == [old_kid, new_kid]
    assert not second_page.next_page_token

    new = await issue(client, "admin", credentials(config).clients["admin"].client_secret)
    assert new.kid == new_kid and old.kid == old_kid
    assert (await client.introspect_token(pb.IntrospectTokenRequest(token=old.access_token))).active

    during = verifier_from(published, clock=lambda: overlap_end - 1)
    after = verifier_from(published, clock=lambda: overlap_end + 1)
    during.verify(old.access_token)
    after.verify(new.access_token)
    with pytest.raises(Unauthenticated) as caught:
        after.verify(old.access_token)
    assert caught.value.reason == "TOKEN_KEY_INACTIVE"
    signing = [name for name in await sealed_names(running) if name.startswith("tokens/signing/")]
    assert signing == [f"tokens/signing/{new_kid}"], "the replaced key's secret half is destroyed"

    cut = await client.rotate_signing_key(pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration()))
    assert not cut.previous_keys, "overlap zero retires every older key at once"
    assert not (await client.introspect_token(pb.IntrospectTokenRequest(token=new.access_token))).active
    for bad in (-1, 31 * 86400):
        error = await refusal(
            client.rotate_signing_key(pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration(seconds=bad)))
        )
        assert "overlap" in error.field_violations


async def test_the_active_key_rotates_automatically_at_its_maximum_age(
    store_config: dict[str, str], tmp_path: Path, start_service: StartService
) -> None:
    config = tokens_config(tmp_path, store_config, signing_key_max_age_seconds=1, maintenance_interval_seconds=0.1)
    client = TokenClient((await start_service(build, config)).channel)
    first = await active_kid(client)

    async def rotated() -> bool:
        return await active_kid(client) != first

    await eventually(rotated)
    keys = (await client.list_public_keys(pb.ListPublicKeysRequest())).keys
    assert first in [k.kid for k in keys], "the replaced key stays published for the overlap"


def stored_bytes(config: Any) -> bytes:
    """Everything the token store holds, raw (see `tests.support.rawstore`)."""
    return rawstore.stored_bytes(config, "tokens")


def secret_forms(secret: bytes) -> list[bytes]:
    """The ways a signing key's secret half could be written down: raw, hex, base64, PASERK."""
    seed = secret[:32]
    return [
        seed,
        seed.hex().encode(),
        base64.b64encode(seed).rstrip(b"="),
        base64.urlsafe_b64encode(seed).rstrip(b"="),
        paseto.paserk_secret(secret).encode(),
    ]


async def test_no_secret_is_stored_in_the_clear_and_every_file_is_private(running: Running, config: Any) -> None:
    client = TokenClient(running.channel)
    created = await create(client, "carol", kind=pb.CLIENT_KIND_PERSON, request_id="create-carol")
    enrolled = await client.enroll_mfa(pb.EnrollMfaRequest(client_id="carol", request_id="enroll-carol"))
    again = await client.enroll_mfa(pb.EnrollMfaRequest(client_id="carol", request_id="enroll-carol"))
    assert again.totp_secret == enrolled.totp_secret, "a retry within the window still gets the secret"
    signing = authority_of(running).ring.active.secret_key
    assert signing is not None
    totp_secret = totp.decode_secret(enrolled.totp_secret)
    forbidden = [
        created.client_secret.encode(),
        enrolled.totp_secret.encode(),
        totp_secret,
        totp_secret.hex().encode(),
        base64.b64encode(totp_secret),
        *secret_forms(signing),
    ]
    stored = stored_bytes(config)
    assert paseto.paserk_public(signing[32:]).encode() in stored, "the dump sees the key rows (public halves)"
    for form in forbidden:
        assert form not in stored, form
    assert f"tokens/signing/{authority_of(running).ring.active.kid}" in await sealed_names(running)

    data_dir = Path(config.data_dir)
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    private = [data_dir / "credentials", data_dir / "kek"]
    if not config.database_url:
        private += [data_dir / "tokens.db", data_dir / "tokens.db-wal", data_dir / "tokens.db-shm"]
    for path in private:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path.name


async def test_restart_keeps_clients_keys_revocations_and_the_bootstrap(
    config: Any, start_service: StartService
) -> None:
    first = await start_service(build, config)
    client = TokenClient(first.channel)
    credentials_file = Path(config.data_dir) / "credentials"
    written = credentials_file.read_bytes()
    secret = (await create(client, "keeper", allowed_scopes=["credits.read"])).client_secret
    old = await issue(client, "keeper", secret)
    await client.rotate_signing_key(pb.RotateSigningKeyRequest())
    revoked = await issue(client, "keeper", secret)
    await client.revoke_token(pb.RevokeTokenRequest(token=revoked.access_token))
    keys_before = await client.list_public_keys(pb.ListPublicKeysRequest())
    clients_before = await client.list_clients(pb.ListClientsRequest())
    await stop_service(first)

    second = await start_service(build, config)
    client = TokenClient(second.channel)
    assert credentials_file.read_bytes() == written, "a later start leaves the credentials alone"
    assert await client.list_clients(pb.ListClientsRequest()) == clients_before
    assert await client.list_public_keys(pb.ListPublicKeysRequest()) == keys_before
    assert (await client.introspect_token(pb.IntrospectTokenRequest(token=old.access_token))).active
    assert not (await client.introspect_token(pb.IntrospectTokenRequest(token=revoked.access_token))).active
    assert [r.jti async for r in revocations(client, 0)] == [revoked.jti]
    assert (await issue(client, "keeper", secret)).kid == keys_before.keys[-1].kid


# --- bootstrap ---------------------------------------------------------------------------------


async def test_bootstrap_writes_an_admin_and_one_workload_per_server(running: Running, config: Any) -> None:
    client = TokenClient(running.channel)
    written = credentials(config)
    assert written.token_endpoint == f"127.0.0.1:{config.port}"
    assert set(written.clients) == {"admin", *WORKLOAD_SCOPES}
    admin = written.clients["admin"]
    assert set(admin.scopes) == contract_scopes() and {"tokens.admin", "credits.write"} <= set(admin.scopes)
    shown = (await client.get_client(pb.GetClientRequest(client_id="admin"))).client
    assert shown.kind == pb.CLIENT_KIND_PERSON and list(shown.allowed_audiences) == ["shieldx"]
    for server, scopes in WORKLOAD_SCOPES.items():
        entry = written.clients[server]
        granted = await issue(client, entry.client_id, entry.client_secret, audience=entry.audience)
        assert set(granted.scopes) == set(scopes) == set(entry.scopes)
        assert {"tokens.watch", "deployment.read", "flags.evaluate"} <= set(scopes)
    assert "sharding.topology" in WORKLOAD_SCOPES["credits"] and "credits.admin" in WORKLOAD_SCOPES["compliance"]


async def test_without_bootstrap_nothing_is_created(
    store_config: dict[str, str], tmp_path: Path, start_service: StartService
) -> None:
    config = tokens_config(tmp_path, store_config, bootstrap=False)
    client = TokenClient((await start_service(build, config)).channel)
    assert not (await client.list_clients(pb.ListClientsRequest())).clients
    assert not (Path(config.data_dir) / "credentials").exists()
    assert len((await client.list_public_keys(pb.ListPublicKeysRequest())).keys) == 1, "a signing key all the same"


# --- bearer tokens at the service's own door -----------------------------------------------------


@pytest.fixture
async def guarded(store_config: dict[str, str], tmp_path: Path, start_service: StartService) -> tuple[Running, Any]:
    config = tokens_config(tmp_path, store_config, auth=True)
    return await start_service(build, config), config


async def test_another_client_reusing_the_admins_request_id_gets_its_own_answer(
    guarded: tuple[Running, Any],
) -> None:
    running, config = guarded
    client = TokenClient(running.channel)
    admin = bearer(await admin_token(client, config))
    operator_secret = (
        await client.create_client(
            pb.CreateClientRequest(
                client_id="operator",
                client=pb.Client(kind=pb.CLIENT_KIND_WORKLOAD, enabled=True, allowed_scopes=["tokens.admin"]),
            ),
            metadata=admin,
        )
    ).client_secret
    operator = bearer((await issue(client, "operator", operator_secret)).access_token)

    wanted = pb.CreateClientRequest(
        client_id="ops", client=pb.Client(kind=pb.CLIENT_KIND_WORKLOAD, enabled=True), request_id="shared-1"
    )
    first = await client.create_client(wanted, metadata=admin)
    assert (await client.create_client(wanted, metadata=admin)) == first, "the admin's retry is replayed"
    # The same request under the same id from another client runs as its own request: the
    # client exists now, and the admin's answer (with the new client's secret) is never shown.
    error = await refusal(client.create_client(wanted, metadata=operator))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    other = pb.CreateClientRequest(
        client_id="ops-2", client=pb.Client(kind=pb.CLIENT_KIND_WORKLOAD, enabled=True), request_id="shared-1"
    )
    reused = await refusal(client.create_client(other, metadata=admin))
    assert reused.reason == "REQUEST_ID_REUSED", "within one client's scope, reuse is refused as before"


def _tamper(token: str, part: int, change: Callable[[bytes], bytes]) -> str:
    pieces = token.split(".")
    pieces[part] = paseto.b64url_encode(change(paseto.b64url_decode(pieces[part])))
    return ".".join(pieces)


def _flip_first(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


async def test_bad_bearer_tokens_are_unauthenticated_and_the_service_survives(
    guarded: tuple[Running, Any],
) -> None:
    running, config = guarded
    client = TokenClient(running.channel)
    token = await admin_token(client, config)
    kid = await active_kid(client)
    stranger = nacl.signing.SigningKey.generate()
    ours = service_signer(running, kid)
    bad = {
        "tampered payload": (_tamper(token, 2, _flip_first), "TOKEN_SIGNATURE_INVALID"),
        "tampered footer": (
            _tamper(token, 3, lambda f: json.dumps({"kid": kid, "x": 1}).encode()),
            "TOKEN_SIGNATURE_INVALID",
        ),
        "wrong key": (
            paseto.sign(
                stranger, ours.mint(audience="shieldx", ttl=timedelta(minutes=5)).claims.to_payload(), footer_for(kid)
            ),
            "TOKEN_SIGNATURE_INVALID",
        ),
        "unknown kid": (
            TokenSigner(stranger, issuer="shieldx-tokens").mint(audience="shieldx", ttl=timedelta(minutes=5)).token,
            "TOKEN_UNKNOWN_KEY",
        ),
        "expired": (
            service_signer(running, kid, clock=lambda: time.time() - 7200)
            .mint(audience="shieldx", ttl=timedelta(hours=1))
            .token,
            "TOKEN_EXPIRED",
        ),
        "not yet valid": (
            ours.mint(
                audience="shieldx", ttl=timedelta(hours=2), not_before=datetime.now(UTC) + timedelta(hours=1)
            ).token,
            "TOKEN_NOT_YET_VALID",
        ),
        "wrong audience": (ours.mint(audience="elsewhere", ttl=timedelta(minutes=5)).token, "TOKEN_AUDIENCE_MISMATCH"),
        "v4.local": ("v4.local." + token.split(".", 2)[2], "TOKEN_UNSUPPORTED"),
        "v3.public": ("v3.public." + token.split(".", 2)[2], "TOKEN_UNSUPPORTED"),
        "padded": (token + "=", "TOKEN_MALFORMED"),
        "oversized": ("v4.public." + "A" * 6000, "TOKEN_TOO_LARGE"),
    }
    for case, (forged, reason) in bad.items():
        error = await refusal(client.list_clients(pb.ListClientsRequest(), metadata=bearer(forged)))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason), case
    missing = await refusal(client.list_clients(pb.ListClientsRequest()))
    assert (missing.code, missing.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")

    await client.revoke_token(pb.RevokeTokenRequest(token=token), metadata=bearer(await admin_token(client, config)))
    revoked = await refusal(client.list_clients(pb.ListClientsRequest(), metadata=bearer(token)))
    assert (revoked.code, revoked.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")

    workload = credentials(config).clients["credits"]
    narrow = (await issue(client, workload.client_id, workload.client_secret)).access_token
    denied = await refusal(client.list_clients(pb.ListClientsRequest(), metadata=bearer(narrow)))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    health = await health_pb2_grpc.HealthStub(running.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_service_follows_its_own_rotations_for_its_callers(guarded: tuple[Running, Any]) -> None:
    running, config = guarded
    client = TokenClient(running.channel)
    admin = bearer(await admin_token(client, config))
    await client.rotate_signing_key(pb.RotateSigningKeyRequest(overlap=duration_pb2.Duration()), metadata=admin)
    cut = await refusal(client.list_clients(pb.ListClientsRequest(), metadata=admin))
    assert cut.reason in ("TOKEN_UNKNOWN_KEY", "TOKEN_KEY_INACTIVE")
    fresh = bearer(await admin_token(client, config))
    assert (await client.list_clients(pb.ListClientsRequest(), metadata=fresh)).clients


async def test_fuzzing_the_token_service_finds_no_crash(guarded: tuple[Running, Any]) -> None:
    running, config = guarded
    client = TokenClient(running.channel)
    service = pb.DESCRIPTOR.services_by_name["TokenService"]
    metadata = bearer(await admin_token(client, config))
    admin = credentials(config).clients["admin"]
    examples = {
        "IssueToken": [pb.IssueTokenRequest(client_id=admin.client_id, client_secret=admin.client_secret)],
        "UpdateClient": [
            pb.UpdateClientRequest(
                client=pb.Client(client_id="fuzz-nobody", enabled=True),
                update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
            )
        ],
    }
    report = await fuzz_service(
        running.channel, service, metadata=metadata, rounds=12, skip=["RotateSigningKey"], examples=examples
    )
    report.assert_clean()
    report.assert_reaches_logic()
    # Rotations last: a zero overlap retires the key the admin token was signed with.
    rotations = await fuzz_service(
        running.channel,
        service,
        metadata=metadata,
        rounds=12,
        skip=[m.name for m in service.methods if m.name != "RotateSigningKey"],
    )
    rotations.assert_clean()
    rotations.assert_reaches_logic()


async def test_a_restart_on_another_address_points_the_credentials_file_there(
    config: Any, start_service: StartService
) -> None:
    # `shieldx up --free-ports` twice in one folder: the servers read the token endpoint from
    # the credentials file, which kept the first run's address (five servers NOT_SERVING).
    first = await start_service(build, config)
    path = Path(config.data_dir) / "credentials"
    written = CredentialsFile.load(path)
    await stop_service(first)

    config.endpoints = {**config.endpoints, "tokens": "127.0.0.1:7101"}
    await start_service(build, config)
    moved = CredentialsFile.load(path)
    assert moved.token_endpoint == "127.0.0.1:7101" and written.token_endpoint != moved.token_endpoint
    assert moved.clients == written.clients, "the secrets stay as they were"
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_source_failing_issue_token_is_limited_before_any_argon2_work(running: Running) -> None:
    # 400 anonymous IssueToken calls from one address ran 400 Argon2id hashes and slowed
    # every other call 50-fold; failures now cost a source 100, then 5 a second.
    client = TokenClient(running.channel)
    hasher = running.service.mounts[0].servicer.hasher if running.service else None
    assert hasher is not None
    before = hasher.verifications
    reasons = []
    for _ in range(200):
        error = await refusal(issue(client, "nobody", "x" * 32))
        reasons.append((error.code, error.reason))
    refused = reasons.count((grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"))
    limited = reasons.count((grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTH_FAILURES_LIMITED"))
    assert refused + limited == 200 and limited >= 50, reasons
    assert hasher.verifications - before == refused, "a limited call runs no Argon2id verification"
