"""Token service rules: client registry, MFA enrolment, IssueToken decisions, revocations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import nacl.signing
import pytest

from servers.mesh.claims import TokenSigner
from servers.mesh.errors import DomainError, FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from servers.mesh.verifier import TokenVerifier, TrustedKey
from servers.tokens import domain, issuance, revocations, totp
from servers.tokens.client_secrets import Argon2idCost, ClientSecretHasher
from servers.tokens.domain import Client, ClientKind, ClientSpec, ClientUpdate, TokenSettings
from servers.tokens.issuance import TokenRequest

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SETTINGS = TokenSettings(default_ttl=timedelta(minutes=15), max_ttl=timedelta(hours=1))


class RecordingSecrets:
    """A SecretChecker that keeps the secret visible in the 'hash' so tests can reason about it."""

    def __init__(self) -> None:
        self.checked_unknown = 0
        self.issued = 0

    def new_secret(self) -> str:
        self.issued += 1
        return f"secret-{self.issued}"

    def hash_secret(self, secret: str) -> str:
        return "hashed:" + secret

    def check_secret(self, secret_hash: str | None, secret: str) -> bool:
        if secret_hash is None:
            self.checked_unknown += 1
            return False
        return secret_hash == "hashed:" + secret


@pytest.fixture
def secrets() -> RecordingSecrets:
    return RecordingSecrets()


def _workload(secrets: RecordingSecrets, **overrides: object) -> tuple[Client, str]:
    spec = ClientSpec(
        client_id=str(overrides.get("client_id", "credits")),
        kind=ClientKind.WORKLOAD,
        allowed_scopes=overrides.get("allowed_scopes", ["credits.read", "credits.write", "tokens.watch"]),  # type: ignore[arg-type]
        allowed_audiences=overrides.get("allowed_audiences", ["shieldx.credits"]),  # type: ignore[arg-type]
        display_name="Credits server",
    )
    return domain.register_client(spec, secrets, NOW)


def _person(secrets: RecordingSecrets) -> tuple[Client, str]:
    spec = ClientSpec(
        client_id="alice",
        kind=ClientKind.PERSON,
        allowed_scopes=["tokens.admin", "credits.read"],
        allowed_audiences=["shieldx.tokens", "shieldx.credits"],
    )
    return domain.register_client(spec, secrets, NOW)


def _error(call: object, *args: object, **kwargs: object) -> DomainError:
    with pytest.raises(DomainError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value


# --- registry ------------------------------------------------------------------------------------


def test_registered_client_keeps_only_the_hash_of_its_secret(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets)
    assert secret == "secret-1"
    assert client.secret_hash == "hashed:secret-1"
    assert secret not in repr(client)
    assert client.allowed_scopes == {"credits.read", "credits.write", "tokens.watch"}
    assert client.allowed_audiences == {"shieldx.credits"}
    assert client.enabled
    assert client.create_time == client.update_time == NOW
    assert not client.mfa_enabled


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"client_id": ""}, "client_id"),
        ({"client_id": "Upper"}, "client_id"),
        ({"client_id": "-leading"}, "client_id"),
        ({"client_id": "x" * 64}, "client_id"),
        ({"client_id": "with space"}, "client_id"),
        ({"allowed_scopes": ["credits read"]}, "client.allowed_scopes"),
        ({"allowed_scopes": ["Credits.Read"]}, "client.allowed_scopes"),
        ({"allowed_scopes": ["credits..read"]}, "client.allowed_scopes"),
        ({"allowed_scopes": [""]}, "client.allowed_scopes"),
        ({"allowed_scopes": [f"s{i}" for i in range(101)]}, "client.allowed_scopes"),
        ({"allowed_audiences": [""]}, "client.allowed_audiences"),
        ({"allowed_audiences": ["a b"]}, "client.allowed_audiences"),
        ({"allowed_audiences": ["a" * 129]}, "client.allowed_audiences"),
    ],
)
def test_malformed_client_is_refused_with_the_field(
    secrets: RecordingSecrets, overrides: dict[str, object], field: str
) -> None:
    error = _error(_workload, secrets, **overrides)
    assert isinstance(error, InvalidArgument)
    assert error.metadata["field"] == field
    assert secrets.issued == 0  # nothing was generated for a refused request


def test_unspecified_kind_and_bad_display_name_are_refused(secrets: RecordingSecrets) -> None:
    no_kind = _error(domain.register_client, ClientSpec("x", kind=None), secrets, NOW)
    assert no_kind.metadata["field"] == "client.kind"
    control = _error(
        domain.register_client, ClientSpec("x", kind=ClientKind.WORKLOAD, display_name="a\x00b"), secrets, NOW
    )
    assert control.metadata["field"] == "client.display_name"


def test_update_changes_only_the_named_fields(secrets: RecordingSecrets) -> None:
    client, _ = _workload(secrets)
    later = NOW + timedelta(minutes=5)
    updated = domain.update_client(
        client, ClientUpdate(enabled=False, allowed_scopes=["credits.read"], display_name="Renamed"), later
    )
    assert not updated.enabled
    assert updated.allowed_scopes == {"credits.read"}
    assert updated.display_name == "Renamed"
    assert updated.allowed_audiences == client.allowed_audiences
    assert updated.secret_hash == client.secret_hash
    assert updated.update_time == later
    assert updated.create_time == NOW


def test_update_that_changes_nothing_keeps_the_update_time(secrets: RecordingSecrets) -> None:
    client, _ = _workload(secrets)
    same = domain.update_client(client, ClientUpdate(enabled=True), NOW + timedelta(hours=1))
    assert same == client


def test_update_validates_like_creation(secrets: RecordingSecrets) -> None:
    client, _ = _workload(secrets)
    error = _error(domain.update_client, client, ClientUpdate(allowed_audiences=["bad audience"]), NOW)
    assert error.metadata["field"] == "client.allowed_audiences"


@pytest.mark.parametrize("paths", [[], ["secret_hash"], ["enabled", "client_id"]])
def test_update_mask_must_name_updatable_fields(paths: list[str]) -> None:
    error = _error(domain.check_update_mask, paths)
    assert error.metadata["field"] == "update_mask"


def test_update_mask_accepts_updatable_fields() -> None:
    assert domain.check_update_mask(["enabled", "allowed_scopes"]) == {"enabled", "allowed_scopes"}


# --- MFA enrolment -------------------------------------------------------------------------------


def test_person_enrols_and_gets_a_scannable_uri(secrets: RecordingSecrets) -> None:
    person, _ = _person(secrets)
    enrolled, shown = domain.enroll_mfa(person, SETTINGS, NOW)
    assert enrolled.mfa_enabled
    assert enrolled.mfa is not None
    assert totp.decode_secret(shown.secret) == enrolled.mfa.secret
    assert shown.provisioning_uri.startswith("otpauth://totp/ShieldX:alice?secret=" + shown.secret)
    assert shown.secret not in repr(enrolled)


def test_re_enrolling_replaces_the_secret(secrets: RecordingSecrets) -> None:
    person, _ = _person(secrets)
    first, _ = domain.enroll_mfa(person, SETTINGS, NOW)
    second, _ = domain.enroll_mfa(first, SETTINGS, NOW)
    assert first.mfa is not None and second.mfa is not None
    assert first.mfa.secret != second.mfa.secret


def test_workloads_do_not_enrol(secrets: RecordingSecrets) -> None:
    client, _ = _workload(secrets)
    error = _error(domain.enroll_mfa, client, SETTINGS, NOW)
    assert isinstance(error, FailedPrecondition)
    assert error.reason == domain.MFA_NOT_FOR_WORKLOADS


def test_mfa_can_be_switched_off_and_back_on_only_when_enrolled(secrets: RecordingSecrets) -> None:
    person, _ = _person(secrets)
    error = _error(domain.update_client, person, ClientUpdate(mfa_enabled=True), NOW)
    assert error.reason == domain.MFA_NOT_ENROLLED
    enrolled, _ = domain.enroll_mfa(person, SETTINGS, NOW)
    off = domain.update_client(enrolled, ClientUpdate(mfa_enabled=False), NOW)
    assert not off.mfa_enabled
    assert domain.update_client(off, ClientUpdate(mfa_enabled=True), NOW).mfa_enabled


# --- IssueToken ----------------------------------------------------------------------------------


def _issue(
    client: Client | None, secrets: RecordingSecrets, secret: str, at: datetime = NOW, **fields: object
) -> issuance.TokenGrant:
    request = TokenRequest(client_id=client.client_id if client else "ghost", client_secret=secret, **fields)  # type: ignore[arg-type]
    return issuance.authorize_issue(client, request, SETTINGS, secrets, at)


def test_workload_gets_all_allowed_scopes_and_its_only_audience_by_default(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets)
    grant = _issue(client, secrets, secret)
    assert grant.client_id == "credits"
    assert grant.scopes == client.allowed_scopes
    assert grant.audience == "shieldx.credits"
    assert grant.ttl == SETTINGS.default_ttl
    assert grant.mfa_step is None


def test_requested_subset_of_scopes_and_ttl_are_granted(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets)
    grant = _issue(client, secrets, secret, scopes=["credits.read"], ttl=timedelta(minutes=5))
    assert grant.scopes == {"credits.read"}
    assert grant.ttl == timedelta(minutes=5)
    assert _issue(client, secrets, secret, ttl=SETTINGS.max_ttl).ttl == SETTINGS.max_ttl


@pytest.mark.parametrize(
    ("fields", "error_type", "reason"),
    [
        ({"scopes": ["credits.admin"]}, PermissionDenied, issuance.SCOPE_NOT_ALLOWED),
        ({"scopes": ["credits.read", "tokens.admin"]}, PermissionDenied, issuance.SCOPE_NOT_ALLOWED),
        ({"audience": "shieldx.sharding"}, PermissionDenied, issuance.AUDIENCE_NOT_ALLOWED),
        ({"ttl": timedelta(hours=1, seconds=1)}, InvalidArgument, issuance.TTL_TOO_LONG),
        ({"ttl": timedelta(days=36500)}, InvalidArgument, issuance.TTL_TOO_LONG),
        ({"ttl": timedelta(seconds=-1)}, InvalidArgument, "INVALID_ARGUMENT"),
        ({"ttl": timedelta(milliseconds=500)}, InvalidArgument, "INVALID_ARGUMENT"),
        ({"scopes": ["bad scope"]}, InvalidArgument, "INVALID_ARGUMENT"),
    ],
)
def test_issue_refusals(
    secrets: RecordingSecrets, fields: dict[str, object], error_type: type[DomainError], reason: str
) -> None:
    client, secret = _workload(secrets)
    error = _error(_issue, client, secrets, secret, **fields)
    assert isinstance(error, error_type)
    assert error.reason == reason


def test_scope_refusal_names_the_refused_scopes(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets)
    error = _error(_issue, client, secrets, secret, scopes=["credits.read", "tokens.admin", "a.b"])
    assert error.metadata["scopes"] == "a.b tokens.admin"


def test_ttl_refusal_names_the_field(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets)
    assert _error(_issue, client, secrets, secret, ttl=timedelta(hours=2)).metadata["field"] == "ttl"


def test_unknown_client_and_wrong_secret_look_the_same(secrets: RecordingSecrets) -> None:
    client, _ = _workload(secrets)
    wrong = _error(_issue, client, secrets, "not-the-secret")
    unknown = _error(_issue, None, secrets, "whatever")
    assert isinstance(wrong, Unauthenticated) and isinstance(unknown, Unauthenticated)
    assert wrong.reason == unknown.reason == issuance.INVALID_CLIENT
    assert str(wrong) == str(unknown)
    assert secrets.checked_unknown == 1  # the unknown id still paid for a secret check


def test_credentials_are_checked_before_revealing_what_the_client_may_do(secrets: RecordingSecrets) -> None:
    client, _ = _workload(secrets)
    assert _error(_issue, client, secrets, "wrong", scopes=["tokens.admin"]).reason == issuance.INVALID_CLIENT
    disabled = domain.update_client(client, ClientUpdate(enabled=False), NOW)
    assert _error(_issue, disabled, secrets, "wrong").reason == issuance.INVALID_CLIENT


def test_disabled_client_gets_no_token(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets)
    disabled = domain.update_client(client, ClientUpdate(enabled=False), NOW)
    error = _error(_issue, disabled, secrets, secret)
    assert isinstance(error, PermissionDenied)
    assert error.reason == issuance.CLIENT_DISABLED


@pytest.mark.parametrize(("field", "request_fields"), [("client_id", {"client_id": ""}), ("client_secret", {})])
def test_missing_credentials_are_invalid_arguments(
    secrets: RecordingSecrets, field: str, request_fields: dict[str, str]
) -> None:
    client, secret = _workload(secrets)
    request = TokenRequest(
        client_id=request_fields.get("client_id", "credits"),
        client_secret=secret if field == "client_id" else "",
    )
    error = _error(issuance.authorize_issue, client, request, SETTINGS, secrets, NOW)
    assert error.metadata["field"] == field


def test_audience_is_required_when_several_are_allowed(secrets: RecordingSecrets) -> None:
    person, secret = _person(secrets)
    error = _error(_issue, person, secrets, secret)
    assert error.reason == issuance.AUDIENCE_REQUIRED
    assert error.metadata["field"] == "audience"
    assert _issue(person, secrets, secret, audience="shieldx.tokens").audience == "shieldx.tokens"


def test_client_without_audiences_cannot_get_a_token(secrets: RecordingSecrets) -> None:
    client, secret = _workload(secrets, allowed_audiences=[])
    assert _error(_issue, client, secrets, secret).reason == issuance.AUDIENCE_REQUIRED


def test_person_without_mfa_needs_no_code(secrets: RecordingSecrets) -> None:
    person, secret = _person(secrets)
    assert _issue(person, secrets, secret, audience="shieldx.tokens").mfa_step is None


def test_person_with_mfa_must_present_a_current_code_once(secrets: RecordingSecrets) -> None:
    person, secret = _person(secrets)
    enrolled, _ = domain.enroll_mfa(person, SETTINGS, NOW)
    assert enrolled.mfa is not None
    assert _error(_issue, enrolled, secrets, secret, audience="shieldx.tokens").reason == issuance.MFA_REQUIRED
    window = {totp.code_at(enrolled.mfa.secret, NOW.timestamp() + 30 * offset) for offset in (-1, 0, 1)}
    wrong = next(code for code in ("000000", "111111", "222222", "333333") if code not in window)
    assert (
        _error(_issue, enrolled, secrets, secret, totp_code=wrong, audience="shieldx.tokens").reason
        == issuance.MFA_INVALID
    )

    code = totp.code_at(enrolled.mfa.secret, NOW.timestamp())
    grant = _issue(enrolled, secrets, secret, totp_code=code, audience="shieldx.tokens")
    assert grant.mfa_step == int(NOW.timestamp()) // 30

    after_use = issuance.record_mfa_use(enrolled, grant.mfa_step, NOW)
    replay = _error(_issue, after_use, secrets, secret, totp_code=code, audience="shieldx.tokens")
    assert replay.reason == issuance.MFA_REPLAYED

    next_code = totp.code_at(enrolled.mfa.secret, NOW.timestamp() + 30)
    later = NOW + timedelta(seconds=30)
    assert (
        _issue(after_use, secrets, secret, at=later, totp_code=next_code, audience="shieldx.tokens").mfa_step
        == grant.mfa_step + 1
    )


def test_wrong_code_is_mfa_invalid(secrets: RecordingSecrets) -> None:
    person, secret = _person(secrets)
    enrolled, _ = domain.enroll_mfa(person, SETTINGS, NOW, secret=b"12345678901234567890")
    # RFC 4226 counter 0 value: far outside the window at NOW.
    error = _error(_issue, enrolled, secrets, secret, totp_code="755224", audience="shieldx.tokens")
    assert error.reason == issuance.MFA_INVALID


def test_mfa_is_checked_after_the_request_is_known_to_be_grantable(secrets: RecordingSecrets) -> None:
    # A request refused for its scope must not have spent the person's code.
    person, secret = _person(secrets)
    enrolled, _ = domain.enroll_mfa(person, SETTINGS, NOW)
    assert enrolled.mfa is not None
    code = totp.code_at(enrolled.mfa.secret, NOW.timestamp())
    error = _error(_issue, enrolled, secrets, secret, totp_code=code, audience="shieldx.tokens", scopes=["x.y"])
    assert error.reason == issuance.SCOPE_NOT_ALLOWED


def test_mfa_switched_off_needs_no_code(secrets: RecordingSecrets) -> None:
    person, secret = _person(secrets)
    enrolled, _ = domain.enroll_mfa(person, SETTINGS, NOW)
    off = domain.update_client(enrolled, ClientUpdate(mfa_enabled=False), NOW)
    assert _issue(off, secrets, secret, audience="shieldx.tokens").mfa_step is None


def test_issue_with_real_argon2id_secrets() -> None:
    hasher = ClientSecretHasher(Argon2idCost(opslimit=1, memlimit=8192))
    client, secret = domain.register_client(
        ClientSpec("deception", ClientKind.WORKLOAD, ["deception.read"], ["shieldx.deception"]), hasher, NOW
    )
    assert client.secret_hash.startswith("$argon2id$")
    request = TokenRequest(client_id="deception", client_secret=secret)
    assert issuance.authorize_issue(client, request, SETTINGS, hasher, NOW).scopes == {"deception.read"}
    wrong = TokenRequest(client_id="deception", client_secret=secret + "x")
    assert _error(issuance.authorize_issue, client, wrong, SETTINGS, hasher, NOW).reason == issuance.INVALID_CLIENT


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"issuer": ""},
        {"default_ttl": timedelta(hours=2), "max_ttl": timedelta(hours=1)},
        {"max_ttl": timedelta(0)},
        {"rotation_overlap": timedelta(seconds=-1)},
        {"leeway": timedelta(seconds=-1)},
        {"signing_key_max_age": timedelta(0)},
    ],
)
def test_inconsistent_settings_are_refused(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TokenSettings(**arguments)  # type: ignore[arg-type]


# --- revocations ---------------------------------------------------------------------------------


@pytest.fixture
def signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes(32))


@pytest.fixture
def inspector(signing_key: nacl.signing.SigningKey) -> TokenVerifier:
    return TokenVerifier(audience=None, keys=[TrustedKey(signing_key.verify_key)], clock=NOW.timestamp)


def _token(signing_key: nacl.signing.SigningKey, at: datetime = NOW, ttl: timedelta = timedelta(minutes=10)) -> str:
    signer = TokenSigner(signing_key, issuer="shieldx-tokens", clock=at.timestamp)
    return signer.mint(audience="shieldx.credits", ttl=ttl, scopes=["credits.read"]).token


def test_revoking_a_valid_token_keeps_it_until_its_expiry(
    signing_key: nacl.signing.SigningKey, inspector: TokenVerifier
) -> None:
    token = _token(signing_key)
    revocation = revocations.plan_revocation(token=token, jti="", inspector=inspector, settings=SETTINGS, now=NOW)
    assert revocation is not None
    assert revocation.jti == inspector.verify(token).jti
    assert revocation.expire_time == NOW + timedelta(minutes=10)
    assert revocation.revoke_time == NOW
    assert not revocation.is_stale(NOW + timedelta(minutes=10), SETTINGS)  # leeway still lets it through
    assert revocation.is_stale(NOW + timedelta(minutes=10) + SETTINGS.leeway, SETTINGS)


@pytest.mark.parametrize("token", ["garbage", "v4.local.abc", "v4.public." + "A" * 100])
def test_revoking_an_invalid_token_succeeds_without_recording(token: str, inspector: TokenVerifier) -> None:
    assert revocations.plan_revocation(token=token, jti="", inspector=inspector, settings=SETTINGS, now=NOW) is None


def test_revoking_an_expired_or_already_revoked_token_records_nothing(
    signing_key: nacl.signing.SigningKey, inspector: TokenVerifier
) -> None:
    expired = _token(signing_key, at=NOW - timedelta(hours=2))
    assert revocations.plan_revocation(token=expired, jti="", inspector=inspector, settings=SETTINGS, now=NOW) is None
    token = _token(signing_key)
    claims = inspector.verify(token)
    inspector.revoke(claims.jti, claims.exp)
    assert revocations.plan_revocation(token=token, jti="", inspector=inspector, settings=SETTINGS, now=NOW) is None


def test_revoking_by_jti_keeps_it_for_the_longest_token_lifetime(inspector: TokenVerifier) -> None:
    revocation = revocations.plan_revocation(token="", jti="abc", inspector=inspector, settings=SETTINGS, now=NOW)
    assert revocation == revocations.Revocation(jti="abc", expire_time=NOW + SETTINGS.max_ttl, revoke_time=NOW)


@pytest.mark.parametrize(
    ("token", "jti", "field"),
    [("", "", "token"), ("t", "j", "jti"), ("", "x" * 129, "jti"), ("", "a\nb", "jti"), ("", "é", "jti")],
)
def test_revocation_request_shape(inspector: TokenVerifier, token: str, jti: str, field: str) -> None:
    error = _error(revocations.plan_revocation, token=token, jti=jti, inspector=inspector, settings=SETTINGS, now=NOW)
    assert error.metadata["field"] == field


def test_introspection_answers_only_active_or_not(
    signing_key: nacl.signing.SigningKey, inspector: TokenVerifier
) -> None:
    token = _token(signing_key)
    claims = revocations.introspect(token, inspector)
    assert claims is not None and claims.scope == {"credits.read"}
    assert revocations.introspect(token[:-3], inspector) is None
    assert revocations.introspect(_token(signing_key, at=NOW - timedelta(hours=1)), inspector) is None
    assert _error(revocations.introspect, "", inspector).metadata["field"] == "token"


@pytest.mark.parametrize(
    ("after", "latest", "expected"),
    [
        (0, 0, revocations.ResumePoint(0, reset=False)),
        (0, 5, revocations.ResumePoint(0, reset=False)),
        (3, 5, revocations.ResumePoint(3, reset=False)),
        (5, 5, revocations.ResumePoint(5, reset=False)),
        (9, 5, revocations.ResumePoint(0, reset=True)),
    ],
)
def test_watchers_resume_after_their_last_sequence(after: int, latest: int, expected: revocations.ResumePoint) -> None:
    assert revocations.resume_point(after, latest) == expected


@pytest.mark.parametrize(
    ("after", "purged_through", "expected"),
    [
        (0, 4, revocations.ResumePoint(0, reset=False)),
        (3, 4, revocations.ResumePoint(0, reset=True)),
        (4, 4, revocations.ResumePoint(4, reset=False)),
        (5, 4, revocations.ResumePoint(5, reset=False)),
    ],
)
def test_watchers_behind_a_purge_get_a_fresh_snapshot(
    after: int, purged_through: int, expected: revocations.ResumePoint
) -> None:
    assert revocations.resume_point(after, 5, purged_through) == expected


def test_negative_resume_point_is_refused() -> None:
    assert _error(revocations.resume_point, -1, 5).metadata["field"] == "after_sequence"
