"""Secrets that every replica of a service must share, kept in the service's database, sealed.

Signing keys, the keys that encrypt data at rest, lookup keys: with several replicas on one
PostgreSQL database each must use the same ones, so they live in the database
(`sealed_secrets`), each encrypted with XChaCha20-Poly1305 under a key-encryption key (KEK) that
never enters the database, its name bound as associated data (a sealed value cannot be moved
to another name). The KEK comes from `secrets.kek` (base64, e.g. an environment variable filled
from a Kubernetes Secret), else `secrets.kek_file` (a mounted file, mode 0600 or stricter),
else `<data_dir>/kek`, generated 0600 on first start so a local `shieldx up` needs no setup.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.utils

from servers.mesh import storage

KEK_BYTES = 32
"""Length of a key-encryption key."""
DEFAULT_KEK_FILE = "kek"
"""The generated KEK's file name under the data directory."""
_NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES


class VaultError(RuntimeError):
    """The KEK cannot be had or trusted, or a sealed secret does not open under it."""


class KeyEncryptionKey:
    """Seals and opens named secrets (XChaCha20-Poly1305, the name as associated data)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_BYTES:
            raise VaultError(f"a key-encryption key has {KEK_BYTES} bytes, not {len(key)}")
        self._key = key
        self.kek_id = hashlib.blake2b(key, person=b"shieldx-kek-id", digest_size=6).hexdigest()
        """A public fingerprint naming the KEK a secret was sealed under (never the key itself)."""

    @classmethod
    def from_base64(cls, text: str) -> KeyEncryptionKey:
        """A KEK given as base64 (config or environment)."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except binascii.Error:
            raise VaultError("the key-encryption key is not base64") from None

    def seal(self, name: str, secret: bytes) -> str:
        """`secret` encrypted and bound to `name`, as base64 text."""
        nonce = nacl.utils.random(_NONCE_BYTES)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(secret, name.encode(), nonce, self._key)
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, name: str, sealed: str) -> bytes:
        """The secret sealed under `name`; VaultError if it was sealed under another KEK or name, or altered."""
        try:
            raw = base64.b64decode(sealed, validate=True)
            return bytes(
                nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    raw[_NONCE_BYTES:], name.encode(), raw[:_NONCE_BYTES], self._key
                )
            )
        except (binascii.Error, nacl.exceptions.CryptoError, ValueError):
            raise VaultError(f"sealed secret {name!r} does not open under this key-encryption key") from None


def load_kek(inline: str, path: str, data_dir: Path) -> KeyEncryptionKey:
    """The KEK from `inline` base64, else the file `path`, else `<data_dir>/kek` (made 0600 if missing)."""
    if inline:
        return KeyEncryptionKey.from_base64(inline)
    if path:
        content = _read_private(Path(path))
        if content is None:
            raise VaultError(f"key-encryption key file {path} does not exist")
        return KeyEncryptionKey.from_base64(content.decode("ascii", "replace"))
    default = data_dir / DEFAULT_KEK_FILE
    content = _read_private(default)
    if content is None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        content = _create_once(default, base64.b64encode(nacl.utils.random(KEK_BYTES)) + b"\n")
    return KeyEncryptionKey.from_base64(content.decode("ascii", "replace"))


def _read_private(path: Path) -> bytes | None:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise VaultError(f"{path} has mode {mode:04o}; a key file must be 0600 (chmod 600 it)")
        return handle.read()


def _create_once(path: Path, content: bytes) -> bytes:
    """Create `path` (0600) with `content` unless another process did first; what it holds afterwards."""
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    existing = _read_private(path)
    if existing is None:
        raise VaultError(f"{path} vanished while being created")
    return existing


class SecretVault:
    """Named secrets of one service in its database, sealed under the KEK; safe for replicas to share."""

    def __init__(self, database: storage.Database, kek: KeyEncryptionKey, *, clock: Callable[[], float] = time.time):
        self.database = database
        self.kek = kek
        self._clock = clock

    async def get(self, name: str, tx: storage.Transaction | None = None) -> bytes | None:
        """The secret called `name`, or None if there is none."""
        sql, args = "SELECT sealed FROM sealed_secrets WHERE name = ?", (name,)
        row = await (tx.fetchone(sql, args) if tx is not None else self.database.fetchone(sql, args))
        return None if row is None else self.kek.open(name, row["sealed"])

    async def put(self, tx: storage.Transaction, name: str, secret: bytes) -> None:
        """Store a new secret in `tx`; storage.UniqueViolation if `name` is taken."""
        await tx.execute(
            "INSERT INTO sealed_secrets (name, sealed, kek_id, created_at) VALUES (?, ?, ?, ?)",
            (name, self.kek.seal(name, secret), self.kek.kek_id, self._clock()),
        )

    async def get_or_create(self, name: str, make: Callable[[], bytes]) -> bytes:
        """The secret called `name`; the first replica to ask stores `make()`, every other one reads it."""
        for _ in range(5):
            existing = await self.get(name)
            if existing is not None:
                return existing
            try:
                async with self.database.transaction() as tx:
                    await self.put(tx, name, make())
            except (storage.UniqueViolation, storage.TransientError):
                await asyncio.sleep(0.01)  # another replica stored it first: read theirs
        existing = await self.get(name)
        if existing is None:
            raise VaultError(f"could not store or read secret {name!r}")
        return existing

    async def delete(self, tx: storage.Transaction, names: list[str]) -> int:
        """Destroy the named secrets in `tx`; returns how many existed."""
        deleted = 0
        for name in names:
            deleted += await tx.execute("DELETE FROM sealed_secrets WHERE name = ?", (name,))
        return deleted
