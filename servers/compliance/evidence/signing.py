"""The evidence-chain head signed with the compliance server's Ed25519 key, and its offline check."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nacl.exceptions
import nacl.signing

from servers.compliance.evidence.domain import canonical_json, rfc3339
from servers.mesh.keyfiles import read_or_create_secret


@dataclass(frozen=True)
class ChainHead:
    """The signed end of the evidence chain."""

    sequence: int
    chain_sha256: str
    sign_time: datetime
    signature: str
    """Base64 Ed25519 signature of `head_signing_bytes`."""
    public_key: str
    """Base64 raw Ed25519 public key."""

    @property
    def key_id(self) -> str:
        """First 16 hex characters of the SHA-256 of the public key."""
        return key_id(base64.b64decode(self.public_key))


def key_id(public_key: bytes) -> str:
    """A short name of a public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def head_signing_bytes(sequence: int, chain_sha256: str, sign_time: str) -> bytes:
    """What the signature covers: canonical JSON of sequence, chain_sha256 and sign_time (RFC 3339)."""
    return canonical_json({"sequence": sequence, "chain_sha256": chain_sha256, "sign_time": sign_time}).encode()


def verify_head(sequence: int, chain_sha256: str, sign_time: str, signature: str, public_key: str) -> bool:
    """True if `signature` (base64) is `public_key`'s (base64) signature of that head; needs nothing else."""
    try:
        verify_key = nacl.signing.VerifyKey(base64.b64decode(public_key, validate=True))
        verify_key.verify(head_signing_bytes(sequence, chain_sha256, sign_time), base64.b64decode(signature))
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


class HeadSigner:
    """Signs chain heads with the server's key."""

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self.public_key = base64.b64encode(bytes(key.verify_key)).decode()

    @classmethod
    def from_file(cls, path: Path) -> HeadSigner:
        """The signer whose base64 seed is in `path` (0600), generated on first use."""
        seed = read_or_create_secret(path, lambda: base64.b64encode(bytes(nacl.signing.SigningKey.generate())).decode())
        try:
            return cls(nacl.signing.SigningKey(base64.b64decode(seed, validate=True)))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"evidence signing key {path} is not a base64 Ed25519 seed") from exc

    def sign(self, sequence: int, chain_sha256: str, when: datetime) -> ChainHead:
        """The signed head at `when`."""
        payload = head_signing_bytes(sequence, chain_sha256, rfc3339(when))
        signature = base64.b64encode(self._key.sign(payload).signature).decode()
        return ChainHead(sequence, chain_sha256, when, signature, self.public_key)
