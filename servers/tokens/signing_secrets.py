"""Secret halves of the token service's signing keys, shared by its replicas through the vault.

Each active key's secret half is stored in the service's database, sealed under the
key-encryption key (`servers.mesh.vault`), as `tokens/signing/<kid>`, in the same transaction
as the key's row: a replica that sees the row can sign with it, so replicas never rotate each
other's keys for want of a secret. A secret half an older version left in a 0600 file under
`<data_dir>/keys` is moved into the vault the first time it is needed.
"""

from __future__ import annotations

import asyncio

from servers.mesh import storage
from servers.mesh.vault import SecretVault
from servers.tokens.secret_files import SigningKeyFiles

_PREFIX = "tokens/signing/"


def vault_name(kid: str) -> str:
    """The vault name of key `kid`'s secret half."""
    return f"{_PREFIX}{kid}"


class SigningKeySecrets:
    """Store, read and destroy signing keys' secret halves (64-byte Ed25519 seed || public key)."""

    def __init__(self, vault: SecretVault, legacy: SigningKeyFiles | None = None) -> None:
        self.vault = vault
        self._legacy = legacy
        self._destroyed: set[str] = set()

    async def store(self, tx: storage.Transaction, kid: str, secret_key: bytes) -> None:
        """Keep the secret half of a new key in `tx` (the transaction that installs its row)."""
        await self.vault.put(tx, vault_name(kid), secret_key)

    async def read(self, kid: str) -> bytes | None:
        """The secret half of `kid`, or None if it was destroyed (or never existed)."""
        secret = await self.vault.get(vault_name(kid))
        if secret is not None or self._legacy is None:
            return secret
        legacy = await asyncio.to_thread(self._legacy.read, kid)
        if legacy is None:
            return None
        return await self.vault.get_or_create(vault_name(kid), lambda: legacy)

    async def prune(self, active: str | None, known: set[str]) -> None:
        """Destroy the secret halves of the `known` keys that no longer sign (all but `active`).

        Only keys whose rows were read are touched: a key another replica is installing right
        now is not among them, so its secret survives.
        """
        retired = sorted(kid for kid in known if kid != active and kid not in self._destroyed)
        if retired:
            async with self.vault.database.transaction() as tx:
                await self.vault.delete(tx, [vault_name(kid) for kid in retired])
            self._destroyed.update(retired)
        if self._legacy is not None:
            await asyncio.to_thread(self._legacy.prune, active, known)
