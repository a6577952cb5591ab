"""Real PASETO v4.public tokens for tests: a signing key, a verifier trusting it, tokens with chosen scopes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import nacl.signing

from servers.mesh.claims import TokenSigner
from servers.mesh.verifier import TokenVerifier, TrustedKey

ISSUER = "shieldx-tokens"
AUDIENCE = "shieldx"


class TestAuthority:
    """A signing key of our own and a verifier that trusts it (what the token service would publish)."""

    __test__ = False

    def __init__(self, audience: str = AUDIENCE) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.signer = TokenSigner(self.key, issuer=ISSUER)
        self.verifier = TokenVerifier(audience=audience, keys=[TrustedKey(self.key.verify_key)], issuer=ISSUER)
        self.audience = audience

    def token(
        self, scopes: Iterable[str], *, client_id: str = "test-client", ttl: timedelta = timedelta(minutes=5)
    ) -> str:
        """A signed token with `scopes`."""
        return self.signer.mint(
            audience=self.audience, ttl=ttl, scopes=scopes, client_id=client_id, subject=client_id
        ).token

    def metadata(self, scopes: Iterable[str], **kwargs: object) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying a token with `scopes`."""
        return (("authorization", f"Bearer {self.token(scopes, **kwargs)}"),)  # type: ignore[arg-type]


def mint_admin_token(scopes: Iterable[str]) -> tuple[str, TokenVerifier]:
    """A token with `scopes` and a verifier that accepts it (for benchmarks)."""
    authority = TestAuthority()
    return authority.token(scopes), authority.verifier
