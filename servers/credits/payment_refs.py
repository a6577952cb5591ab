"""Payment references at rest: SecretBox encryption plus a keyed lookup hash for exact search.

A purchase's payment reference is stored only sealed: encrypted with XSalsa20-Poly1305
(pynacl `SecretBox`, random nonce) and accompanied by a keyed BLAKE2b of the plaintext, so
ListTransactions can find a reference by exact value with an index lookup instead of
decrypting every row. Both keys are derived from one configured 32-byte master key with
distinct BLAKE2b personalisations, so neither is ever used for two purposes. Keys rotate:
older master keys stay configured to open old rows and to search for them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

import nacl.exceptions
import nacl.secret

from servers.credits.events import SealedPaymentReference
from servers.mesh.errors import InvalidArgument
from servers.mesh.text import check_free_text

MAX_PAYMENT_REFERENCE_LENGTH = 256
_FORMAT = "v1"


class PaymentReferenceUnreadable(ValueError):
    """A sealed reference cannot be opened: unknown key id, malformed or tampered ciphertext."""


@dataclass(frozen=True)
class PaymentReferenceConfig:
    """Keys for payment references at rest (read from the credits config / environment)."""

    key: str
    """Current master key: 32 random bytes, base64. New references are sealed with it."""
    previous_keys: tuple[str, ...] = ()
    """Retired master keys (base64), still used to open and to search older references."""


def generate_key() -> str:
    """A fresh master key in the config's base64 form (for operators setting up a ledger)."""
    return base64.b64encode(secrets.token_bytes(nacl.secret.SecretBox.KEY_SIZE)).decode()


class _DerivedKeys:
    """The box key, lookup key and public key id derived from one master key."""

    def __init__(self, master: bytes) -> None:
        self.key_id = _derive(master, b"shieldx-pr-id", 4).hex()
        self.box = nacl.secret.SecretBox(_derive(master, b"shieldx-pr-box", nacl.secret.SecretBox.KEY_SIZE))
        self.lookup_key = _derive(master, b"shieldx-pr-look", 32)

    def lookup(self, reference: str) -> str:
        hashed = hashlib.blake2b(reference.encode(), key=self.lookup_key, digest_size=32).hexdigest()
        return f"{self.key_id}:{hashed}"


class PaymentReferenceCipher:
    """Seals and opens payment references with the configured keys."""

    def __init__(self, config: PaymentReferenceConfig) -> None:
        self._current = _DerivedKeys(_decode_key(config.key, "key"))
        self._all = [self._current] + [
            _DerivedKeys(_decode_key(old, f"previous_keys[{i}]")) for i, old in enumerate(config.previous_keys)
        ]
        self._by_id = {keys.key_id: keys for keys in self._all}
        if len(self._by_id) != len(self._all):
            raise ValueError("payment reference keys: the same key is configured twice")

    def seal(self, reference: str) -> SealedPaymentReference:
        """Encrypt a reference with the current key; InvalidArgument(`payment_reference`) if malformed."""
        validate_payment_reference(reference)
        encrypted = bytes(self._current.box.encrypt(reference.encode()))
        ciphertext = f"{_FORMAT}:{self._current.key_id}:{base64.b64encode(encrypted).decode()}"
        return SealedPaymentReference(ciphertext, self._current.lookup(reference))

    def open(self, ciphertext: str) -> str:
        """The plaintext of a sealed reference; `PaymentReferenceUnreadable` if it cannot be opened."""
        version, _, rest = ciphertext.partition(":")
        key_id, _, payload = rest.partition(":")
        if version != _FORMAT or not payload:
            raise PaymentReferenceUnreadable("not a sealed payment reference")
        keys = self._by_id.get(key_id)
        if keys is None:
            raise PaymentReferenceUnreadable(f"sealed with unknown key {key_id!r}")
        try:
            plaintext = bytes(keys.box.decrypt(base64.b64decode(payload, validate=True)))
            return plaintext.decode()
        except (binascii.Error, nacl.exceptions.CryptoError, UnicodeDecodeError, ValueError) as exc:
            raise PaymentReferenceUnreadable("payment reference does not decrypt") from exc

    def lookups(self, reference: str) -> tuple[str, ...]:
        """The lookup values `reference` has under every configured key (match any of them)."""
        return tuple(keys.lookup(reference) for keys in self._all)


def validate_payment_reference(reference: str, field: str = "payment_reference") -> None:
    """Raise InvalidArgument(field) unless `reference` is 1-256 characters of single-line free text."""
    check_free_text(reference, field, MAX_PAYMENT_REFERENCE_LENGTH, required=True)
    try:
        reference.encode()
    except UnicodeEncodeError as exc:
        raise InvalidArgument(field, "must be valid UTF-8") from exc


def _decode_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"payment reference {name} is not base64") from exc
    if len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise ValueError(f"payment reference {name} must be {nacl.secret.SecretBox.KEY_SIZE} bytes")
    return key


def _derive(master: bytes, purpose: bytes, size: int) -> bytes:
    return hashlib.blake2b(b"", key=master, person=purpose, digest_size=size).digest()
