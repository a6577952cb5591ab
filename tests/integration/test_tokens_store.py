"""The token store on SQLite and PostgreSQL: sequences under concurrency, rotations that race, MFA steps."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from servers.mesh import storage
from servers.mesh.storage import Database, open_database
from servers.tokens import keys
from servers.tokens.domain import Client, ClientKind, MfaEnrolment
from servers.tokens.revocations import Revocation
from servers.tokens.secret_files import AtRestCipher
from servers.tokens.store import TokenStore

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(store_config: dict[str, str], tmp_path: Path) -> AsyncIterator[TokenStore]:
    database: Database = await open_database(
        "tokens",
        data_dir=store_config["data_dir"],
        database_url=store_config["database_url"],
        schema=store_config.get("database_schema"),
        migrations=("servers.mesh.migrations", "servers.tokens.migrations"),
    )
    yield TokenStore(database, AtRestCipher.open(tmp_path / "at-rest.key"))
    await database.close()


async def test_concurrent_revocations_get_consecutive_sequences(store: TokenStore) -> None:
    async def revoke(i: int) -> Revocation | None:
        async with store.database.transaction() as tx:
            return await store.record_revocation(tx, Revocation(f"jti-{i}", NOW + timedelta(hours=1), NOW))

    recorded = await asyncio.gather(*(revoke(i) for i in range(20)))
    assert sorted(r.sequence for r in recorded if r) == list(range(1, 21))
    async with store.database.transaction() as tx:
        assert await store.record_revocation(tx, Revocation("jti-3", NOW + timedelta(hours=1), NOW)) is None
    assert (await store.revocation_marks()).last_sequence == 20


async def test_purging_never_lowers_the_sequence(store: TokenStore) -> None:
    for i, expiry in enumerate([NOW, NOW + timedelta(hours=1), NOW]):
        async with store.database.transaction() as tx:
            await store.record_revocation(tx, Revocation(f"j{i}", expiry, NOW))
    assert await store.purge_revocations(NOW + timedelta(seconds=1)) == 2
    marks = await store.revocation_marks()
    assert (marks.last_sequence, marks.purged_through) == (3, 3)
    assert [r.jti for r in await store.revocations_after(0, 10)] == ["j1"]
    async with store.database.transaction() as tx:
        again = await store.record_revocation(tx, Revocation("j0", NOW + timedelta(hours=1), NOW))
    assert again is not None and again.sequence == 4


async def test_racing_rotations_leave_exactly_one_active_key(store: TokenStore) -> None:
    async with store.database.transaction() as tx:
        await store.install_signing_key(tx, keys.generate_signing_key(NOW), NOW, timedelta(hours=1))

    async def rival() -> None:
        async with store.database.transaction() as tx:
            await store.install_signing_key(tx, keys.generate_signing_key(NOW), NOW, timedelta(hours=1))

    async with store.database.transaction() as tx:
        await store.install_signing_key(tx, keys.generate_signing_key(NOW), NOW, timedelta(hours=1))
        task = asyncio.create_task(rival())
        await asyncio.sleep(0.2)  # PostgreSQL: the rival reads the old ring and waits on its row lock
    if store.database.dialect == "postgres":
        # The rival read the old ring, then waited on the row lock: it loses and would be retried.
        with pytest.raises((storage.TransientError, storage.UniqueViolation)):
            await task
        expected_keys = 2
    else:
        await task  # SQLite runs one writer at a time: the rival rotated the new ring afterwards
        expected_keys = 3
    ring = keys.KeyRing(tuple(await store.signing_keys()))
    assert sum(key.not_after is None for key in ring.keys) == 1
    assert len(ring.keys) == expected_keys


async def test_mfa_step_advances_only_from_the_step_that_was_read(store: TokenStore) -> None:
    person = Client(
        client_id="alice",
        kind=ClientKind.PERSON,
        secret_hash="$argon2id$placeholder",
        allowed_scopes=frozenset({"tokens.read"}),
        allowed_audiences=frozenset({"shieldx"}),
        enabled=True,
        create_time=NOW,
        update_time=NOW,
        mfa=MfaEnrolment(secret=b"s" * 20, enabled=True, enroll_time=NOW),
    )
    async with store.database.transaction() as tx:
        await store.insert_client(tx, person)
    sealed = await store.database.fetchone("SELECT mfa_secret FROM clients WHERE client_id = 'alice'")
    assert sealed is not None and base64.b64decode(sealed[0]).find(b"s" * 20) == -1, "encrypted at rest"
    read = await store.get_client("alice")
    assert read is not None and read.mfa is not None and read.mfa.secret == b"s" * 20, "decrypted on read"
    assert await store.advance_mfa_step(read, 100)
    assert not await store.advance_mfa_step(read, 101), "a second use of the same read loses"
    fresh = await store.get_client("alice")
    assert fresh is not None and fresh.mfa is not None and fresh.mfa.last_used_step == 100
    assert await store.advance_mfa_step(fresh, 101)
