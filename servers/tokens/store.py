"""Persistence of the token service: clients, signing keys (public halves), revocations.

One implementation for SQLite and PostgreSQL (portable SQL with `?` placeholders). Methods
that change state take the open transaction of the caller (a `RequestLedger` work function),
so the change and the idempotency record commit together. Optimistic concurrency: a write
that finds the row changed since it was read raises `storage.TransientError`, which the
ledger answers by running the work again.

Times are stored as microseconds since the epoch. TOTP secrets are stored encrypted with
`AtRestCipher`, and so are the request ledger's stored answers (`SealedAnswers`); signing keys'
secret halves are sealed in the vault (`signing_secrets`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from servers.mesh import paseto, storage
from servers.mesh.storage import Database, Row, Transaction
from servers.mesh.timestamps import from_micros, to_micros
from servers.tokens.domain import Client, ClientKind, MfaEnrolment
from servers.tokens.keys import KeyRing, SigningKeyRecord
from servers.tokens.lockout import LockoutPolicy, MfaFailures, after_wrong_code
from servers.tokens.revocations import Revocation
from servers.tokens.secret_files import AtRestCipher

log = logging.getLogger(__name__)

_CLIENT_COLUMNS = (
    "client_id, kind, display_name, secret_hash, allowed_scopes, allowed_audiences, enabled,"
    " create_time_us, update_time_us, mfa_secret, mfa_enabled, mfa_enroll_time_us, mfa_last_step"
)
_KEY_COLUMNS = "kid, public_key, state, create_time_us, not_before_us, not_after_us"
_REVOCATION_COLUMNS = "sequence, jti, expire_time_us, revoke_time_us"


def _words(values: Iterable[str]) -> str:
    return " ".join(sorted(values))


def _split_words(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


@dataclass(frozen=True, slots=True)
class RevocationMarks:
    """Where the revocation history stands."""

    last_sequence: int
    """The last sequence handed out (it never goes back, even when rows are purged)."""
    purged_through: int
    """The highest sequence purged so far."""


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A response the request ledger keeps for replays."""

    request_id: str
    """Its request id."""
    scope: str
    """Whose request id it is (`idempotency.caller_scope`)."""
    method: str
    """The RPC it answered."""
    response: bytes
    """The serialized response message."""


class SealedAnswers:
    """The request ledger's stored answers, encrypted with the at-rest cipher: CreateClient and
    EnrollMfa answers carry one-time secrets, which must never reach the database (or its WAL) in
    the clear. An answer stored before answers were sealed is read as it is."""

    def __init__(self, cipher: AtRestCipher) -> None:
        self._cipher = cipher

    def seal(self, answer: bytes) -> bytes:
        """The encrypted form (base64 text, as bytes)."""
        return self._cipher.encrypt(answer).encode("ascii")

    def open(self, stored: bytes) -> bytes:
        """The serialized answer."""
        opened = self._cipher.decrypt(stored.decode("ascii", "replace"))
        return stored if opened is None else opened


class TokenStore:
    """The token service's tables behind a small async interface."""

    def __init__(self, database: Database, cipher: AtRestCipher) -> None:
        self.answers = SealedAnswers(cipher)
        """How the request ledger stores this service's answers."""
        self.database = database
        self._cipher = cipher

    # --- clients ----------------------------------------------------------------------------------

    async def get_client(self, client_id: str, tx: Transaction | None = None) -> Client | None:
        """The client, or None; reads in `tx` when given, else in a short transaction of its own."""
        sql = f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ?"
        row = await (tx.fetchone(sql, (client_id,)) if tx else self.database.fetchone(sql, (client_id,)))
        return None if row is None else self._client(row)

    async def list_clients(self, after: str | None, limit: int) -> list[Client]:
        """Up to `limit` clients ordered by id, after the id `after` (None: from the start)."""
        rows = await self.database.fetchall(
            f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id > ? ORDER BY client_id LIMIT ?",
            (after or "", limit),
        )
        return [self._client(row) for row in rows]

    async def has_clients(self) -> bool:
        """True once any client is registered."""
        return await self.database.fetchone("SELECT 1 FROM clients LIMIT 1") is not None

    async def insert_client(self, tx: Transaction, client: Client) -> None:
        """Record a new client; raises storage.UniqueViolation if the id is taken."""
        mfa = client.mfa
        await tx.execute(
            f"INSERT INTO clients ({_CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                client.client_id,
                client.kind.value,
                client.display_name,
                client.secret_hash,
                _words(client.allowed_scopes),
                _words(client.allowed_audiences),
                client.enabled,
                to_micros(client.create_time),
                to_micros(client.update_time),
                None if mfa is None else self._cipher.encrypt(mfa.secret),
                mfa is not None and mfa.enabled,
                None if mfa is None else to_micros(mfa.enroll_time),
                None if mfa is None else mfa.last_used_step,
            ),
        )

    async def update_client(self, tx: Transaction, before: Client, after: Client) -> None:
        """Write the settings of `after` (not its secrets), if the row is still as `before` was read."""
        changed = await tx.execute(
            "UPDATE clients SET display_name = ?, allowed_scopes = ?, allowed_audiences = ?, enabled = ?,"
            " mfa_enabled = ?, update_time_us = ? WHERE client_id = ? AND update_time_us = ?",
            (
                after.display_name,
                _words(after.allowed_scopes),
                _words(after.allowed_audiences),
                after.enabled,
                after.mfa is not None and after.mfa.enabled,
                to_micros(after.update_time),
                after.client_id,
                to_micros(before.update_time),
            ),
        )
        self._require_one(changed, before.client_id)

    async def save_enrolment(self, tx: Transaction, before: Client, after: Client) -> None:
        """Replace the client's TOTP enrolment with `after.mfa` (encrypted), if unchanged since read."""
        enrolment = after.mfa
        if enrolment is None:
            raise ValueError("save_enrolment needs an enrolment")
        changed = await tx.execute(
            "UPDATE clients SET mfa_secret = ?, mfa_enabled = ?, mfa_enroll_time_us = ?, mfa_last_step = ?,"
            " update_time_us = ? WHERE client_id = ? AND update_time_us = ?",
            (
                self._cipher.encrypt(enrolment.secret),
                enrolment.enabled,
                to_micros(enrolment.enroll_time),
                enrolment.last_used_step,
                to_micros(after.update_time),
                after.client_id,
                to_micros(before.update_time),
            ),
        )
        self._require_one(changed, before.client_id)

    async def delete_client(self, tx: Transaction, client_id: str) -> bool:
        """Delete a client; False if there was none."""
        return await tx.execute("DELETE FROM clients WHERE client_id = ?", (client_id,)) > 0

    async def advance_mfa_step(self, client: Client, step: int) -> bool:
        """Record TOTP `step` as used, only if no code was accepted since `client` was read.

        Compare-and-set on the last used step: of two requests presenting the same code at
        once, exactly one advances it; False tells the other its code was spent.
        """
        enrolment = client.mfa
        if enrolment is None:
            return False
        changed = await self.database.execute(
            "UPDATE clients SET mfa_last_step = ? WHERE client_id = ? AND mfa_enabled"
            " AND mfa_enroll_time_us = ? AND COALESCE(mfa_last_step, -1) = ?",
            (
                step,
                client.client_id,
                to_micros(enrolment.enroll_time),
                -1 if enrolment.last_used_step is None else enrolment.last_used_step,
            ),
        )
        return changed == 1

    async def mfa_failures(self, client_id: str) -> MfaFailures:
        """The client's run of wrong TOTP codes (none recorded: zero)."""
        row = await self.database.fetchone(
            "SELECT failures, locked_until_us FROM mfa_lockouts WHERE client_id = ?", (client_id,)
        )
        return _failures(row)

    async def record_wrong_code(self, client_id: str, policy: LockoutPolicy, now: datetime) -> MfaFailures:
        """Count one more wrong TOTP code (atomically, so concurrent guesses all count); the new run."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO mfa_lockouts (client_id, failures) VALUES (?, 1)"
                " ON CONFLICT (client_id) DO UPDATE SET failures = mfa_lockouts.failures + 1",
                (client_id,),
            )
            row = await tx.fetchone(
                "SELECT failures, locked_until_us FROM mfa_lockouts WHERE client_id = ?", (client_id,)
            )
            counted = _failures(row)
            after = after_wrong_code(MfaFailures(counted.failures - 1, counted.locked_until), policy, now)
            if after.locked_until != counted.locked_until and after.locked_until is not None:
                await tx.execute(
                    "UPDATE mfa_lockouts SET locked_until_us = ? WHERE client_id = ?",
                    (to_micros(after.locked_until), client_id),
                )
        return after

    async def clear_mfa_failures(self, client_id: str) -> None:
        """A right code: the run of wrong ones is over."""
        await self.database.execute("DELETE FROM mfa_lockouts WHERE client_id = ?", (client_id,))

    def _client(self, row: Row) -> Client:
        return Client(
            client_id=row["client_id"],
            kind=ClientKind(row["kind"]),
            secret_hash=row["secret_hash"],
            allowed_scopes=_split_words(row["allowed_scopes"]),
            allowed_audiences=_split_words(row["allowed_audiences"]),
            enabled=bool(row["enabled"]),
            create_time=from_micros(row["create_time_us"]),
            update_time=from_micros(row["update_time_us"]),
            display_name=row["display_name"],
            mfa=self._enrolment(row),
        )

    def _enrolment(self, row: Row) -> MfaEnrolment | None:
        sealed = row["mfa_secret"]
        if sealed is None:
            return None
        secret = self._cipher.decrypt(sealed)
        if secret is None:
            # The at-rest key is not the one this secret was sealed with (a lost or replaced
            # key file). Fail closed: a random secret nobody knows refuses every code, and
            # EnrollMfa can still replace the enrolment.
            log.error("TOTP secret cannot be decrypted; the client must enrol again", extra={"client": row[0]})
            secret = secrets.token_bytes(20)
        return MfaEnrolment(
            secret=secret,
            enabled=bool(row["mfa_enabled"]),
            enroll_time=from_micros(row["mfa_enroll_time_us"]),
            last_used_step=row["mfa_last_step"],
        )

    @staticmethod
    def _require_one(changed: int, client_id: str) -> None:
        if changed != 1:
            raise storage.TransientError(f"client {client_id!r} changed concurrently")

    # --- signing keys -----------------------------------------------------------------------------

    async def signing_keys(self, tx: Transaction | None = None) -> list[SigningKeyRecord]:
        """Every key not purged yet, oldest first, without secret halves."""
        sql = f"SELECT {_KEY_COLUMNS} FROM signing_keys ORDER BY create_time_us, kid"
        rows = await (tx.fetchall(sql) if tx else self.database.fetchall(sql))
        return [
            SigningKeyRecord(
                kid=row["kid"],
                public_key=bytes(paseto.parse_paserk_public(row["public_key"])),
                secret_key=None,
                create_time=from_micros(row["create_time_us"]),
                not_before=from_micros(row["not_before_us"]),
                not_after=None if row["not_after_us"] is None else from_micros(row["not_after_us"]),
            )
            for row in rows
        ]

    async def install_signing_key(
        self, tx: Transaction, new_key: SigningKeyRecord, now: datetime, overlap: timedelta
    ) -> KeyRing:
        """Make `new_key` the active key (the first one, or by rotation); returns the resulting ring.

        The ring is read in `tx` and each retired key is updated only if it is still as read,
        so two concurrent rotations cannot both succeed: the loser gets TransientError (and
        the unique index on the active state refuses a second active key in any case).
        """
        before = {key.kid: key for key in await self.signing_keys(tx)}
        ring = KeyRing(tuple(before.values())).rotate(now, overlap, new_key)
        for key in ring.keys:
            old = before.get(key.kid)
            if old is None or old.not_after == key.not_after:
                continue
            changed = await tx.execute(
                "UPDATE signing_keys SET state = 'previous', not_after_us = ? WHERE kid = ? AND state = ?"
                " AND COALESCE(not_after_us, -1) = ?",
                (
                    to_micros(key.not_after) if key.not_after else None,
                    key.kid,
                    "active" if old.not_after is None else "previous",
                    -1 if old.not_after is None else to_micros(old.not_after),
                ),
            )
            if changed != 1:
                raise storage.TransientError("signing keys changed concurrently")
        await tx.execute(
            f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (?, ?, 'active', ?, ?, NULL)",
            (new_key.kid, new_key.paserk, to_micros(new_key.create_time), to_micros(new_key.not_before)),
        )
        return ring

    async def purge_retired_keys(self, horizon: datetime) -> list[str]:
        """Forget keys whose overlap ended before `horizon`; returns their kids."""
        async with self.database.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT kid FROM signing_keys WHERE state = 'previous' AND not_after_us < ?", (to_micros(horizon),)
            )
            kids = [row["kid"] for row in rows]
            await tx.executemany("DELETE FROM signing_keys WHERE kid = ?", [(kid,) for kid in kids])
        return kids

    # --- revocations ------------------------------------------------------------------------------

    async def record_revocation(self, tx: Transaction, revocation: Revocation) -> Revocation | None:
        """Record a revocation with the next sequence; None if its jti is revoked already.

        The sequence comes from the one-row revocation_log updated in this transaction: the
        row lock (PostgreSQL) or the write lock (SQLite) makes revocations commit in sequence
        order, so a reader that saw sequence n has seen every sequence below n.
        """
        if await tx.fetchone("SELECT 1 FROM revocations WHERE jti = ?", (revocation.jti,)):
            return None
        await tx.execute("UPDATE revocation_log SET last_sequence = last_sequence + 1 WHERE id = 1")
        sequence = int(await tx.fetchval("SELECT last_sequence FROM revocation_log WHERE id = 1"))
        await tx.execute(
            f"INSERT INTO revocations ({_REVOCATION_COLUMNS}) VALUES (?, ?, ?, ?)",
            (sequence, revocation.jti, to_micros(revocation.expire_time), to_micros(revocation.revoke_time)),
        )
        return Revocation(
            jti=revocation.jti,
            expire_time=revocation.expire_time,
            revoke_time=revocation.revoke_time,
            sequence=sequence,
        )

    async def revocations_after(self, sequence: int, limit: int) -> list[Revocation]:
        """Up to `limit` revocations with a sequence above `sequence`, in sequence order."""
        rows = await self.database.fetchall(
            f"SELECT {_REVOCATION_COLUMNS} FROM revocations WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (sequence, limit),
        )
        return [
            Revocation(
                jti=row["jti"],
                expire_time=from_micros(row["expire_time_us"]),
                revoke_time=from_micros(row["revoke_time_us"]),
                sequence=int(row["sequence"]),
            )
            for row in rows
        ]

    async def revocation_marks(self) -> RevocationMarks:
        """The last sequence handed out and the highest one purged."""
        row = await self.database.fetchone("SELECT last_sequence, purged_through FROM revocation_log WHERE id = 1")
        if row is None:
            return RevocationMarks(0, 0)
        return RevocationMarks(int(row["last_sequence"]), int(row["purged_through"]))

    async def purge_revocations(self, horizon: datetime) -> int:
        """Forget revocations of tokens expired before `horizon`; returns how many."""
        cutoff = to_micros(horizon)
        async with self.database.transaction() as tx:
            highest = await tx.fetchval("SELECT MAX(sequence) FROM revocations WHERE expire_time_us < ?", (cutoff,))
            if highest is None:
                return 0
            purged = await tx.execute("DELETE FROM revocations WHERE expire_time_us < ?", (cutoff,))
            await tx.execute(
                "UPDATE revocation_log SET purged_through = ? WHERE id = 1 AND purged_through < ?",
                (int(highest), int(highest)),
            )
        return purged

    # --- answers kept by the request ledger -------------------------------------------------------

    async def stored_answers(self, methods: Sequence[str], before: float) -> list[StoredAnswer]:
        """Successful answers of `methods` recorded before `before` (epoch seconds)."""
        placeholders = ", ".join("?" for _ in methods)
        rows = await self.database.fetchall(
            "SELECT request_id, scope, method, response FROM request_ids"
            f" WHERE outcome = 'ok' AND method IN ({placeholders}) AND created_at < ?",
            (*methods, before),
        )
        return [
            StoredAnswer(row["request_id"], row["scope"], row["method"], self.answers.open(bytes(row["response"])))
            for row in rows
        ]

    async def replace_answer(self, answer: StoredAnswer, response: bytes) -> None:
        """Overwrite a stored answer (to drop a one-time secret from it)."""
        await self.database.execute(
            "UPDATE request_ids SET response = ? WHERE scope = ? AND request_id = ?",
            (self.answers.seal(response), answer.scope, answer.request_id),
        )


def _failures(row: Row | None) -> MfaFailures:
    if row is None:
        return MfaFailures()
    locked = row["locked_until_us"]
    return MfaFailures(int(row["failures"]), None if locked is None else from_micros(locked))
