"""Shard connection strings at rest: sealed, since they carry the shards' passwords.

The registry keeps each node's DSN encrypted with XSalsa20-Poly1305 (nacl SecretBox) under a
key every sharding replica shares through the vault (`servers.mesh.vault`), so the passwords
appear neither in the database nor in its WAL; the API shows DSNs with the password masked.
A DSN an older version stored in the clear is read as it is and sealed on the next write.
"""

from __future__ import annotations

import base64
import binascii

import nacl.exceptions
import nacl.secret
import nacl.utils

from servers.mesh.vault import SecretVault

VAULT_NAME = "sharding/dsn-key"
"""Vault name of the key that seals shard DSNs."""
_PREFIX = "sealed:v1:"


class DsnUnreadable(ValueError):
    """A stored DSN was sealed under another key, or altered."""


class SealedDsns:
    """Seals and opens node DSNs for the registry's `nodes.dsn` column."""

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key)

    @classmethod
    async def shared(cls, vault: SecretVault) -> SealedDsns:
        """The sealer whose key the replicas share in `vault` (made on first start)."""
        return cls(await vault.get_or_create(VAULT_NAME, lambda: nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)))

    def seal(self, dsn: str) -> str:
        """The stored form of `dsn`."""
        return _PREFIX + base64.b64encode(bytes(self._box.encrypt(dsn.encode()))).decode("ascii")

    def open(self, stored: str) -> str:
        """The DSN of its stored form (one stored in the clear by an older version as it is)."""
        if not stored.startswith(_PREFIX):
            return stored
        try:
            return bytes(self._box.decrypt(base64.b64decode(stored[len(_PREFIX) :], validate=True))).decode()
        except (binascii.Error, nacl.exceptions.CryptoError, UnicodeDecodeError):
            raise DsnUnreadable("a stored shard DSN does not open under the shared key") from None
