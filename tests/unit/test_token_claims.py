"""Token claims and local verification: expiry, not-before, leeway, audience, revocation, keys, cache."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import nacl.signing
import pytest

from servers.mesh import claims as tc
from servers.mesh import paseto
from servers.mesh.claims import TokenClaims, TokenSigner
from servers.mesh.errors import Unauthenticated
from servers.mesh.verifier import TokenVerifier, TrustedKey

START = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Clock:
    """A settable clock in epoch seconds."""

    def __init__(self, at: datetime = START) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta.total_seconds()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signing_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes(range(32)))


@pytest.fixture
def signer(signing_key: nacl.signing.SigningKey, clock: Clock) -> TokenSigner:
    return TokenSigner(signing_key, issuer="shieldx-tokens", clock=clock)


@pytest.fixture
def verifier(signing_key: nacl.signing.SigningKey, clock: Clock) -> TokenVerifier:
    return TokenVerifier(
        audience="shieldx.credits",
        keys=[TrustedKey(signing_key.verify_key)],
        issuer="shieldx-tokens",
        leeway=timedelta(seconds=30),
        clock=clock,
    )


def _mint(signer: TokenSigner, **overrides: object) -> str:
    arguments: dict[str, object] = {
        "audience": "shieldx.credits",
        "ttl": HOUR,
        "subject": "workload:credits",
        "scopes": ["credits.read", "credits.write"],
        "client_id": "credits",
    }
    arguments.update(overrides)
    return signer.mint(**arguments).token  # type: ignore[arg-type]


def _reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    return caught.value.reason


def _raw_token(signing_key: nacl.signing.SigningKey, payload: bytes, footer: bytes | None = None) -> str:
    kid = paseto.paserk_pid(signing_key.verify_key)
    return paseto.sign(signing_key, payload, tc.footer_for(kid) if footer is None else footer)


# --- claims ------------------------------------------------------------------------------------


def test_minted_token_verifies_to_the_claims_it_was_given(signer: TokenSigner, verifier: TokenVerifier) -> None:
    issued = signer.mint(
        audience="shieldx.credits",
        ttl=HOUR,
        subject="workload:credits",
        scopes=["credits.write", "credits.read"],
        client_id="credits",
    )
    claims = verifier.verify(issued.token)
    assert claims == issued.claims
    assert claims.aud == "shieldx.credits"
    assert claims.iss == "shieldx-tokens"
    assert claims.sub == "workload:credits"
    assert claims.client_id == "credits"
    assert claims.scope == frozenset({"credits.read", "credits.write"})
    assert claims.scope_string == "credits.read credits.write"
    assert claims.iat == START
    assert claims.nbf == START
    assert claims.exp == START + HOUR
    assert claims.has_scope("credits.write")
    assert not claims.has_scope("credits.admin")
    assert issued.kid == signer.kid == paseto.paserk_pid(signer.public_key)


def test_footer_carries_the_k4_pid_of_the_signing_key(signer: TokenSigner) -> None:
    token = _mint(signer)
    assert json.loads(paseto.peek_footer(token)) == {"kid": signer.kid}
    assert signer.kid.startswith("k4.pid.")


def test_each_token_gets_a_distinct_jti(signer: TokenSigner) -> None:
    jtis = {signer.mint(audience="a", ttl=HOUR).claims.jti for _ in range(50)}
    assert len(jtis) == 50


def test_payload_is_parsed_from_the_signed_bytes_with_offsets_and_fractions() -> None:
    payload = (
        b'{"aud":"a","jti":"j","exp":"2030-01-01T05:30:00.25+05:30",'
        b'"nbf":"2029-12-31T23:00:00Z","iat":"2029-12-31t23:00:00.123456789z","scope":"x y"}'
    )
    claims = TokenClaims.from_payload(payload)
    assert claims.exp == datetime(2030, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)
    assert claims.nbf == datetime(2029, 12, 31, 23, tzinfo=UTC)
    assert claims.iat == datetime(2029, 12, 31, 23, 0, 0, 123456, tzinfo=UTC)
    assert claims.scope == {"x", "y"}
    assert claims.iss == claims.sub == claims.client_id == ""


def test_claims_round_trip_through_the_payload() -> None:
    original = TokenClaims(
        aud="a",
        exp=datetime(2030, 1, 1, 0, 0, 0, 500, tzinfo=UTC),
        jti="j",
        iss="i",
        sub="s",
        nbf=START,
        iat=START,
        scope=frozenset({"b", "a"}),
        client_id="c",
    )
    assert TokenClaims.from_payload(original.to_payload()) == original


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b'"string"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"aud":"a","jti":"j"}', id="no-exp"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","jti":"j"}', id="no-aud"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a"}', id="no-jti"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":""}', id="empty-jti"),
        pytest.param(b'{"exp":1893456000,"aud":"a","jti":"j"}', id="numeric-exp"),
        pytest.param(b'{"exp":"2030-01-01","aud":"a","jti":"j"}', id="date-only-exp"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00","aud":"a","jti":"j"}', id="exp-without-offset"),
        pytest.param(b'{"exp":"2030-02-30T00:00:00Z","aud":"a","jti":"j"}', id="impossible-date"),
        pytest.param(b'{"exp":"9999-12-31T23:59:59-23:00","aud":"a","jti":"j"}', id="out-of-range"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":["a"],"jti":"j"}', id="aud-array"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":"j","scope":["x"]}', id="scope-array"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":"j","scope":"x  y"}', id="double-space"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":"j","scope":"x\\"y"}', id="scope-quote"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":"j","sub":7}', id="numeric-sub"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","aud":"b","jti":"j"}', id="duplicate-key"),
        pytest.param(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":"j","x":NaN}', id="nan"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="deep-nesting"),
    ],
)
def test_malformed_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(Unauthenticated) as caught:
        TokenClaims.from_payload(payload)
    assert caught.value.reason == tc.TOKEN_MALFORMED


def test_unknown_claims_are_ignored() -> None:
    claims = TokenClaims.from_payload(b'{"exp":"2030-01-01T00:00:00Z","aud":"a","jti":"j","data":{"x":[1]}}')
    assert claims.jti == "j"


def test_signer_refuses_invalid_inputs(signer: TokenSigner) -> None:
    with pytest.raises(ValueError):
        signer.mint(audience="", ttl=HOUR)
    with pytest.raises(ValueError):
        signer.mint(audience="a", ttl=timedelta(0))
    with pytest.raises(ValueError):
        signer.mint(audience="a", ttl=HOUR, scopes=["has space"])


# --- time checks -------------------------------------------------------------------------------


def test_expiry_is_enforced_after_the_leeway(signer: TokenSigner, verifier: TokenVerifier, clock: Clock) -> None:
    token = _mint(signer, ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5, seconds=29))
    assert verifier.verify(token).jti
    clock.advance(timedelta(seconds=1))
    assert _reason(verifier, token) == tc.TOKEN_EXPIRED


def test_not_before_is_enforced_before_the_leeway(signer: TokenSigner, verifier: TokenVerifier, clock: Clock) -> None:
    token = _mint(signer, not_before=START + timedelta(minutes=10))
    assert _reason(verifier, token) == tc.TOKEN_NOT_YET_VALID
    clock.advance(timedelta(minutes=9, seconds=29))
    assert _reason(verifier, token) == tc.TOKEN_NOT_YET_VALID
    clock.advance(timedelta(seconds=1))
    assert verifier.verify(token).jti


def test_zero_leeway_is_exact(signing_key: nacl.signing.SigningKey, signer: TokenSigner, clock: Clock) -> None:
    strict = TokenVerifier(
        audience="shieldx.credits", keys=[TrustedKey(signing_key.verify_key)], leeway=timedelta(0), clock=clock
    )
    token = _mint(signer, ttl=timedelta(seconds=10))
    clock.now = (START + timedelta(seconds=10)).timestamp() - 0.001
    strict.verify(token)
    clock.now = (START + timedelta(seconds=10)).timestamp()
    assert _reason(strict, token) == tc.TOKEN_EXPIRED


# --- audience and issuer -----------------------------------------------------------------------


def test_wrong_audience_is_refused(signer: TokenSigner, verifier: TokenVerifier) -> None:
    assert _reason(verifier, _mint(signer, audience="shieldx.sharding")) == tc.TOKEN_AUDIENCE_MISMATCH


def test_verifier_may_accept_several_audiences(signing_key: nacl.signing.SigningKey, signer: TokenSigner) -> None:
    verifier = TokenVerifier(
        audience=["shieldx.credits", "shieldx"], keys=[TrustedKey(signing_key.verify_key)], clock=Clock()
    )
    assert verifier.verify(_mint(signer, audience="shieldx")).aud == "shieldx"
    assert _reason(verifier, _mint(signer, audience="shieldx.tokens")) == tc.TOKEN_AUDIENCE_MISMATCH


def test_introspection_verifier_accepts_any_audience(signing_key: nacl.signing.SigningKey, signer: TokenSigner) -> None:
    verifier = TokenVerifier(audience=None, keys=[TrustedKey(signing_key.verify_key)], clock=Clock())
    assert verifier.verify(_mint(signer, audience="anything")).aud == "anything"


@pytest.mark.parametrize("audience", ["", [], [""]])
def test_verifier_refuses_an_audience_that_would_match_nothing(audience: str | list[str]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(audience=audience)


def test_wrong_issuer_is_refused(signing_key: nacl.signing.SigningKey, verifier: TokenVerifier) -> None:
    other_issuer = TokenSigner(signing_key, issuer="someone-else", clock=Clock())
    assert _reason(verifier, _mint(other_issuer)) == tc.TOKEN_ISSUER_MISMATCH


# --- keys --------------------------------------------------------------------------------------


def test_unknown_kid_is_refused(verifier: TokenVerifier, clock: Clock) -> None:
    stranger = TokenSigner(nacl.signing.SigningKey.generate(), issuer="shieldx-tokens", clock=clock)
    assert _reason(verifier, _mint(stranger)) == tc.TOKEN_UNKNOWN_KEY


def test_kid_naming_a_trusted_key_with_a_foreign_signature_is_refused(
    signing_key: nacl.signing.SigningKey, verifier: TokenVerifier
) -> None:
    # An attacker copies our kid into the footer of a token they signed themselves.
    forger = nacl.signing.SigningKey.generate()
    kid = paseto.paserk_pid(signing_key.verify_key)
    payload = b'{"aud":"shieldx.credits","exp":"2030-01-01T01:00:00Z","jti":"x","iss":"shieldx-tokens"}'
    token = paseto.sign(forger, payload, tc.footer_for(kid))
    assert _reason(verifier, token) == tc.TOKEN_SIGNATURE_INVALID


@pytest.mark.parametrize(
    "footer",
    [b"", b"not json", b"[]", b'{"kid":7}', b'{"key":"k4.pid.x"}', b'{"kid":"a","kid":"b"}'],
)
def test_footer_without_a_usable_kid_is_malformed(
    signing_key: nacl.signing.SigningKey, verifier: TokenVerifier, footer: bytes
) -> None:
    token = _raw_token(signing_key, b'{"aud":"shieldx.credits","exp":"2030-01-01T01:00:00Z","jti":"x"}', footer)
    assert _reason(verifier, token) == tc.TOKEN_MALFORMED


def test_replacing_the_keys_drops_tokens_of_removed_keys_even_when_cached(
    signing_key: nacl.signing.SigningKey, signer: TokenSigner, verifier: TokenVerifier
) -> None:
    token = _mint(signer)
    verifier.verify(token)
    newcomer = nacl.signing.SigningKey.generate()
    verifier.replace_keys([TrustedKey(newcomer.verify_key)])
    assert _reason(verifier, token) == tc.TOKEN_UNKNOWN_KEY
    verifier.replace_keys([TrustedKey(newcomer.verify_key), TrustedKey(signing_key.verify_key)])
    assert verifier.verify(token).jti
    assert verifier.kids == {paseto.paserk_pid(newcomer.verify_key), signer.kid}


def test_key_past_its_window_is_inactive_even_for_unexpired_tokens(
    signing_key: nacl.signing.SigningKey, signer: TokenSigner, verifier: TokenVerifier, clock: Clock
) -> None:
    token = _mint(signer, ttl=timedelta(hours=2))
    verifier.verify(token)
    verifier.replace_keys([TrustedKey(signing_key.verify_key, not_after=START + HOUR)])
    clock.advance(HOUR + timedelta(seconds=30))
    assert verifier.verify(token).jti  # still inside the leeway
    clock.advance(timedelta(seconds=1))
    assert _reason(verifier, token) == tc.TOKEN_KEY_INACTIVE


def test_key_before_its_window_is_inactive(
    signing_key: nacl.signing.SigningKey, signer: TokenSigner, verifier: TokenVerifier
) -> None:
    verifier.replace_keys([TrustedKey(signing_key.verify_key, not_before=START + HOUR)])
    assert _reason(verifier, _mint(signer)) == tc.TOKEN_KEY_INACTIVE


def test_trusted_key_from_paserk_checks_the_kid(signing_key: nacl.signing.SigningKey) -> None:
    paserk = paseto.paserk_public(signing_key.verify_key)
    kid = paseto.paserk_pid(signing_key.verify_key)
    assert TrustedKey.from_paserk(paserk, kid=kid).kid == kid
    with pytest.raises(paseto.InvalidPaserk):
        TrustedKey.from_paserk(paserk, kid="k4.pid.someone-else")


def test_implicit_assertion_must_match(signing_key: nacl.signing.SigningKey, clock: Clock) -> None:
    signer = TokenSigner(signing_key, issuer="i", clock=clock, implicit_assertion=b"mesh-a")
    verifier = TokenVerifier(
        audience="a", keys=[TrustedKey(signing_key.verify_key)], clock=clock, implicit_assertion=b"mesh-b"
    )
    assert _reason(verifier, _mint(signer, audience="a")) == tc.TOKEN_SIGNATURE_INVALID


# --- revocation --------------------------------------------------------------------------------


def test_revoked_token_is_refused_even_when_cached(signer: TokenSigner, verifier: TokenVerifier, clock: Clock) -> None:
    issued = signer.mint(audience="shieldx.credits", ttl=HOUR)
    verifier.verify(issued.token)
    verifier.revoke(issued.claims.jti, issued.claims.exp)
    assert verifier.is_revoked(issued.claims.jti)
    assert _reason(verifier, issued.token) == tc.TOKEN_REVOKED
    other = _mint(signer)
    assert verifier.verify(other).jti  # other tokens are unaffected


def test_revocations_are_pruned_only_once_expiry_refuses_the_token(
    signer: TokenSigner, verifier: TokenVerifier, clock: Clock
) -> None:
    issued = signer.mint(audience="shieldx.credits", ttl=HOUR)
    verifier.revoke(issued.claims.jti, issued.claims.exp)
    clock.advance(HOUR)
    assert verifier.prune_revocations() == 0  # still within the leeway: must stay revoked
    assert _reason(verifier, issued.token) == tc.TOKEN_REVOKED
    clock.advance(timedelta(seconds=30))
    assert verifier.prune_revocations() == 1
    assert verifier.revocation_count == 0
    assert _reason(verifier, issued.token) == tc.TOKEN_EXPIRED


def test_replacing_revocations_swaps_the_whole_set(signer: TokenSigner, verifier: TokenVerifier) -> None:
    kept = signer.mint(audience="shieldx.credits", ttl=HOUR)
    dropped = signer.mint(audience="shieldx.credits", ttl=HOUR)
    verifier.revoke(dropped.claims.jti, dropped.claims.exp)
    verifier.replace_revocations([(kept.claims.jti, kept.claims.exp)])
    assert _reason(verifier, kept.token) == tc.TOKEN_REVOKED
    assert verifier.verify(dropped.token).jti == dropped.claims.jti
    assert verifier.revocation_count == 1


# --- the cache never skips a check ---------------------------------------------------------------


def test_cached_token_still_expires(signer: TokenSigner, verifier: TokenVerifier, clock: Clock) -> None:
    token = _mint(signer, ttl=timedelta(minutes=1))
    verifier.verify(token)
    verifier.verify(token)
    clock.advance(timedelta(minutes=2))
    assert _reason(verifier, token) == tc.TOKEN_EXPIRED


def test_cached_token_is_still_checked_for_audience(
    signing_key: nacl.signing.SigningKey, signer: TokenSigner, clock: Clock
) -> None:
    # A token cached for one audience cannot be replayed at a verifier for another: each
    # verifier has its own cache and always checks the audience.
    credits = TokenVerifier(audience="shieldx.credits", keys=[TrustedKey(signing_key.verify_key)], clock=clock)
    sharding = TokenVerifier(audience="shieldx.sharding", keys=[TrustedKey(signing_key.verify_key)], clock=clock)
    token = _mint(signer)
    credits.verify(token)
    credits.verify(token)
    assert _reason(sharding, token) == tc.TOKEN_AUDIENCE_MISMATCH


def test_not_yet_valid_token_is_cached_and_becomes_valid(
    signer: TokenSigner, verifier: TokenVerifier, clock: Clock
) -> None:
    token = _mint(signer, not_before=START + timedelta(minutes=5))
    assert _reason(verifier, token) == tc.TOKEN_NOT_YET_VALID
    assert _reason(verifier, token) == tc.TOKEN_NOT_YET_VALID
    clock.advance(timedelta(minutes=5))
    assert verifier.verify(token).jti


def test_cache_hit_skips_the_signature_check(
    signer: TokenSigner, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _mint(signer)
    verifier.verify(token)
    calls: list[str] = []
    real_verify = paseto.verify_by_footer

    def counting_verify(*args: object, **kwargs: object) -> tuple[bytes, bytes]:
        calls.append("verify")
        return real_verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paseto, "verify_by_footer", counting_verify)
    verifier.verify(token)
    assert calls == []
    verifier.verify(_mint(signer))
    assert calls == ["verify"]


def test_cache_is_bounded_and_forgets_the_least_recently_used(
    signing_key: nacl.signing.SigningKey, signer: TokenSigner, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(
        audience="shieldx.credits", keys=[TrustedKey(signing_key.verify_key)], clock=clock, cache_size=2
    )
    first, second, third = _mint(signer), _mint(signer), _mint(signer)
    verifier.verify(first)
    verifier.verify(second)
    verifier.verify(first)  # first becomes the most recently used
    verifier.verify(third)  # evicts second
    calls: list[str] = []
    real_verify = paseto.verify_by_footer

    def counting_verify(token: str, *args: object, **kwargs: object) -> tuple[bytes, bytes]:
        calls.append(token)
        return real_verify(token, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paseto, "verify_by_footer", counting_verify)
    verifier.verify(first)
    verifier.verify(third)
    assert calls == []
    verifier.verify(second)
    assert calls == [second]


def test_failed_tokens_are_not_cached(
    signer: TokenSigner, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _mint(signer)
    body, footer = token.rsplit(".", 1)
    forged = body[:20] + ("A" if body[20] != "A" else "B") + body[21:] + "." + footer
    calls: list[str] = []
    real_verify = paseto.verify_by_footer

    def counting_verify(*args: object, **kwargs: object) -> tuple[bytes, bytes]:
        calls.append("verify")
        return real_verify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paseto, "verify_by_footer", counting_verify)
    for _ in range(2):
        assert _reason(verifier, forged) == tc.TOKEN_SIGNATURE_INVALID
    assert calls == ["verify", "verify"]


def test_verifier_without_cache_still_verifies(
    signing_key: nacl.signing.SigningKey, signer: TokenSigner, clock: Clock
) -> None:
    verifier = TokenVerifier(
        audience="shieldx.credits", keys=[TrustedKey(signing_key.verify_key)], clock=clock, cache_size=0
    )
    token = _mint(signer)
    assert verifier.verify(token) == verifier.verify(token)


def test_format_errors_surface_through_the_verifier(signer: TokenSigner, verifier: TokenVerifier) -> None:
    token = _mint(signer)
    assert _reason(verifier, "v4.local." + token[len("v4.public.") :]) == paseto.TOKEN_UNSUPPORTED
    assert _reason(verifier, token + "=") == paseto.TOKEN_MALFORMED
    assert _reason(verifier, "") == paseto.TOKEN_MALFORMED
    assert _reason(verifier, token + "A" * 9000) == paseto.TOKEN_TOO_LARGE
