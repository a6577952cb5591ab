"""Secret files of older versions of the token service (mode 0600), read once to move them into the vault.

Signing keys' secret halves and the TOTP encryption key now live in the database, sealed
under the key-encryption key (`servers.mesh.vault`, `servers.tokens.signing_secrets`); what
follows describes the files an older version wrote, which are imported on first use.

`<data_dir>/keys/` (mode 0700) holds the secret half of the active signing key, one file per
key named after its kid and holding its PASERK `k4.secret`, and the key that encrypts TOTP
secrets at rest. Files are written atomically (temporary file, fsync, rename), so a crash
leaves either the old file or the new one. A secret file readable by anyone but its owner is
refused at start rather than used. Everything here blocks: callers in the event loop go
through `asyncio.to_thread`.

Replicas of the token service that share one PostgreSQL database must share this directory
too (a secret volume), since the database never holds a secret half.
"""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import time
from pathlib import Path

import nacl.exceptions
import nacl.secret
import nacl.utils

from clients.secret_files import create_secret_file, fsync_directory, write_secret_file
from servers.mesh import paseto
from servers.mesh.vault import SecretVault

KEYS_DIRECTORY = "keys"
"""Directory under the data dir holding the secret files."""

TOTP_KEY_FILE = "totp-secrets.key"
"""File holding the key that encrypts TOTP secrets at rest."""

TOTP_VAULT_NAME = "tokens/totp-key"
"""Vault name of the key that encrypts TOTP secrets (and one-time secrets in stored answers)."""

_SIGNING_KEY_SUFFIX = ".k4.secret"
_ORPHAN_GRACE_SECONDS = 3600.0


class SecretFileError(RuntimeError):
    """A secret file exists but cannot be trusted (wrong mode, wrong content)."""


def read_secret_file(path: Path) -> bytes | None:
    """The content of a secret file, None if it does not exist; SecretFileError if others may read it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(descriptor, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise SecretFileError(f"{path} has mode {mode:04o}; a secret file must be 0600 (chmod 600 it)")
        return handle.read()


def _create_once(path: Path, content: bytes) -> bytes:
    """Create `path` with `content` unless it exists; returns what the file holds afterwards.

    The content is complete on disk before the name appears (hard link of a finished
    temporary file), so a process starting at the same moment reads all of it or nothing.
    """
    if create_secret_file(path, content):
        return content
    existing = read_secret_file(path)
    if existing is None:
        raise SecretFileError(f"{path} vanished while being created")
    return existing


def secrets_directory(data_dir: Path) -> Path:
    """`<data_dir>/keys`, created with mode 0700 if missing."""
    directory = data_dir / KEYS_DIRECTORY
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


class SigningKeyFiles:
    """The secret halves of signing keys, one `<kid>.k4.secret` file each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, kid: str) -> Path:
        """Where the secret half of key `kid` is kept."""
        if not kid.startswith(paseto.PASERK_PID) or "/" in kid or kid.startswith("."):
            raise ValueError(f"not a k4.pid key id: {kid[:60]!r}")
        return self.directory / f"{kid}{_SIGNING_KEY_SUFFIX}"

    def write(self, kid: str, secret_key: bytes) -> None:
        """Persist a 64-byte Ed25519 secret key (seed || public key) as its PASERK."""
        paserk = paseto.paserk_secret(secret_key)
        if paseto.paserk_pid(secret_key[32:]) != kid:
            raise ValueError("kid does not name this key")
        write_secret_file(self.path(kid), paserk.encode("ascii") + b"\n")

    def read(self, kid: str) -> bytes | None:
        """The 64-byte secret key of `kid`, or None if its file is gone; SecretFileError if it is not that key."""
        content = read_secret_file(self.path(kid))
        if content is None:
            return None
        try:
            signing_key = paseto.parse_paserk_secret(content.decode("ascii").strip())
        except (UnicodeDecodeError, paseto.InvalidPaserk) as exc:
            raise SecretFileError(f"{self.path(kid)} does not hold a k4.secret key: {exc}") from None
        public_key = bytes(signing_key.verify_key)
        if paseto.paserk_pid(public_key) != kid:
            raise SecretFileError(f"{self.path(kid)} holds the secret of another key")
        return bytes(signing_key) + public_key

    def kids(self) -> list[str]:
        """Key ids with a secret file."""
        return sorted(p.name.removesuffix(_SIGNING_KEY_SUFFIX) for p in self.directory.glob(f"*{_SIGNING_KEY_SUFFIX}"))

    def destroy(self, kid: str) -> None:
        """Delete the secret half of `kid` (a key that will never sign again)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(kid).unlink()
            fsync_directory(self.directory)

    def prune(self, active: str | None, known: set[str]) -> list[str]:
        """Destroy every secret but the active one's; returns the kids destroyed.

        Files of keys the database does not know yet are kept for an hour: they may belong to
        a rotation another replica is committing right now (its file is written first).
        """
        destroyed = []
        for kid in self.kids():
            if kid == active:
                continue
            if kid not in known and not self._older_than(kid, _ORPHAN_GRACE_SECONDS):
                continue
            self.destroy(kid)
            destroyed.append(kid)
        return destroyed

    def _older_than(self, kid: str, seconds: float) -> bool:
        try:
            return time.time() - self.path(kid).stat().st_mtime > seconds
        except FileNotFoundError:
            return False


class AtRestCipher:
    """Encrypts small secrets (TOTP secrets) for the database with XSalsa20-Poly1305 (nacl SecretBox)."""

    def __init__(self, key: bytes) -> None:
        self._box = nacl.secret.SecretBox(key)

    @classmethod
    async def shared(cls, vault: SecretVault, legacy: Path) -> AtRestCipher:
        """The cipher whose key the replicas share in `vault` (made on first start, or taken from
        the `legacy` key file an older version wrote)."""

        def make() -> bytes:
            existing = read_secret_file(legacy)
            return existing if existing is not None else nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)

        key = await vault.get_or_create(TOTP_VAULT_NAME, make)
        if len(key) != nacl.secret.SecretBox.KEY_SIZE:
            raise SecretFileError(f"{TOTP_VAULT_NAME} does not hold a {nacl.secret.SecretBox.KEY_SIZE}-byte key")
        return cls(key)

    @classmethod
    def open(cls, path: Path) -> AtRestCipher:
        """The cipher whose key is in `path`, generating the key (mode 0600) on first start."""
        key = read_secret_file(path)
        if key is None:
            key = _create_once(path, nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE))
        if len(key) != nacl.secret.SecretBox.KEY_SIZE:
            raise SecretFileError(f"{path} does not hold a {nacl.secret.SecretBox.KEY_SIZE}-byte key")
        return cls(key)

    def encrypt(self, plaintext: bytes) -> str:
        """Nonce and ciphertext, base64 (fits a TEXT column on every backend)."""
        return base64.b64encode(bytes(self._box.encrypt(plaintext))).decode("ascii")

    def decrypt(self, sealed: str) -> bytes | None:
        """The plaintext, or None if `sealed` was not made with this key (or was altered)."""
        try:
            return bytes(self._box.decrypt(base64.b64decode(sealed, validate=True)))
        except (nacl.exceptions.CryptoError, ValueError):
            return None
