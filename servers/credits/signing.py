"""Signed ledger heads: the server's Ed25519 key, signing a head, and the `signed_heads` table."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nacl.exceptions
import nacl.signing

from servers.credits.audit import LedgerHead, head_signing_bytes
from servers.credits.eventstore import Instants
from servers.mesh.keyfiles import existing_or_new, read_or_create_secret
from servers.mesh.storage import Dialect, Transaction
from servers.mesh.vault import SecretVault

HEAD_SIGNING_KEY = "credits/head-signing-seed"
"""Vault name of the ledger head signing key's seed (base64)."""


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A ledger head with the Ed25519 signature over `audit.head_signing_bytes`."""

    head: LedgerHead
    signature: bytes
    public_key: bytes

    def verifies(self) -> bool:
        """True if `signature` is `public_key`'s signature of this head."""
        try:
            nacl.signing.VerifyKey(self.public_key).verify(head_signing_bytes(self.head), self.signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True


class HeadSigner:
    """Signs ledger heads with this server's Ed25519 key."""

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self.public_key = bytes(key.verify_key)

    @classmethod
    async def shared(cls, vault: SecretVault, legacy: Path) -> HeadSigner:
        """The signer whose seed every replica shares in `vault` (made on first start, or taken from the
        `legacy` key file an older version made)."""
        seed = await vault.get_or_create(HEAD_SIGNING_KEY, lambda: existing_or_new(legacy, _new_seed).encode())
        try:
            return cls(nacl.signing.SigningKey(base64.b64decode(seed, validate=True)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{HEAD_SIGNING_KEY} is not a base64 Ed25519 seed") from exc

    @classmethod
    def from_file(cls, path: Path) -> HeadSigner:
        """The signer whose key seed (base64) is in `path`, generating and storing one if absent."""
        seed = read_or_create_secret(path, _new_seed)
        try:
            return cls(nacl.signing.SigningKey(base64.b64decode(seed, validate=True)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"head signing key {path} is not a base64 Ed25519 seed") from exc

    def sign(self, head: LedgerHead) -> SignedHead:
        """The signed form of `head`."""
        return SignedHead(head, self._key.sign(head_signing_bytes(head)).signature, self.public_key)


class SignedHeads:
    """SQL for the `signed_heads` table."""

    def __init__(self, dialect: Dialect) -> None:
        self.instants = Instants(dialect)

    async def latest(self, tx: Transaction) -> SignedHead | None:
        """The most recently stored signed head."""
        row = await tx.fetchone(
            "SELECT digest, signature, public_key, signed_at, account_count, event_count FROM signed_heads"
            " ORDER BY id DESC LIMIT 1"
        )
        if row is None:
            return None
        signed_at: datetime = Instants.required(row[3])
        head = LedgerHead(bytes(row[0]), int(row[4]), int(row[5]), signed_at)
        return SignedHead(head, bytes(row[1]), bytes(row[2]))

    async def add(self, tx: Transaction, signed: SignedHead) -> None:
        """Store a signed head."""
        head = signed.head
        await tx.execute(
            "INSERT INTO signed_heads (digest, signature, public_key, signed_at, account_count, event_count)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                head.digest,
                signed.signature,
                signed.public_key,
                self.instants.column(head.taken_at),
                head.account_count,
                head.event_count,
            ),
        )


def _new_seed() -> str:
    return base64.b64encode(bytes(nacl.signing.SigningKey.generate())).decode()
