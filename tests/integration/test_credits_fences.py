"""Write fences on a real PostgreSQL shard: the shard itself refuses a moving account's writes.

A credits store whose placement knows nothing of the move (a server on an older topology)
writes to one shard; the fence recorded on that shard must stop it, in the same transaction
that would append the events, while other accounts' writes go on. A fence waits for writes
already past the check, prepared two-phase halves included. The event store stays append-only
for live accounts and lets only a moved account's events go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from servers.credits.account import AccountState
from servers.credits.commands import Consume, Purchase
from servers.credits.domain import Decision, decide
from servers.credits.events import SealedPaymentReference
from servers.credits.fences import WriteFences
from servers.credits.placement import AccountPlacement, Shard
from servers.credits.shards import open_shard_database
from servers.credits.store import CreditsStore
from servers.mesh import errors, storage
from servers.mesh.postgres import PostgresDatabase
from shieldx.credits.v1 import credits_pb2 as pb
from tests.support.pgcluster import PgNode, PgWorkspace, PostgresUnavailable


class OlderTopology(AccountPlacement):
    """One shard, placed as a server that has not heard of any move would place it."""

    sharded = True


@pytest.fixture(scope="module")
def node() -> Iterator[PgNode]:
    try:
        workspace = PgWorkspace()
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    with workspace:
        yield workspace.primary("fences", settings={"max_prepared_transactions": "4"})


@pytest.fixture
async def database(node: PgNode) -> AsyncIterator[PostgresDatabase]:
    database = await open_shard_database(node.dsn, pool_size=4)
    try:
        yield database
    finally:
        async with database.transaction() as tx:
            await tx.execute("DELETE FROM account_fences")
        await database.close()


def purchase(account_id: str, amount: int) -> tuple[pb.PurchaseRequest, Purchase]:
    sealed = SealedPaymentReference("v1:test:none", "lookup")
    return pb.PurchaseRequest(account_id=account_id, amount=amount), Purchase(account_id, amount, sealed)


async def consume(store: CreditsStore, account_id: str, amount: int) -> pb.ConsumeResponse:
    command = Consume(account_id, amount)

    def decision(state: AccountState, now: datetime) -> Decision:
        return decide(state, command, now=now)

    return await store.execute(
        "Consume",
        pb.ConsumeRequest(account_id=account_id, amount=amount),
        pb.ConsumeResponse,
        account_id,
        decision,
        lambda d, state: pb.ConsumeResponse(event_version=d.primary.version),
    )


async def fund(store: CreditsStore, account_id: str) -> None:
    request, command = purchase(account_id, 100)
    await store.execute(
        "Purchase",
        request,
        pb.PurchaseResponse,
        account_id,
        lambda state, now: decide(state, command, now=now),
        lambda d, state: pb.PurchaseResponse(event_version=d.primary.version),
    )


def unique(name: str) -> str:
    return f"{name}-{datetime.now(UTC).timestamp():.6f}"


@pytest.mark.parametrize("group_commit", [True, False])
async def test_a_server_on_an_older_topology_cannot_write_a_fenced_account(
    database: PostgresDatabase, group_commit: bool
) -> None:
    store = CreditsStore(OlderTopology([Shard.of("shard-a", database)]), group_commit=group_commit)
    moving, staying = unique("moving"), unique("staying")
    await fund(store, moving)
    await fund(store, staying)
    async with database.transaction() as tx:
        await WriteFences().fence(tx, moving, "rb-1", "shard-b")

    refused, served = await asyncio.gather(
        consume(store, moving, 1), consume(store, staying, 1), return_exceptions=True
    )
    assert isinstance(refused, errors.Unavailable) and refused.reason == "ACCOUNT_MOVING"
    assert refused.retry_after and refused.metadata["shard_id"] == "shard-b"
    assert isinstance(served, pb.ConsumeResponse) and served.event_version == 2, "other accounts write on"
    versions = await database.fetchall("SELECT account_id, MAX(version) FROM event_store GROUP BY account_id")
    assert dict((row[0], row[1]) for row in versions)[moving] == 1, "nothing appended to the fenced account"

    async with database.transaction() as tx:
        await WriteFences().mark_moved(tx, moving, "rb-1", "shard-b")
    with pytest.raises(errors.Unavailable) as moved:
        await consume(store, moving, 1)
    assert moved.value.reason == "ACCOUNT_MOVED"
    await store.close()


async def test_a_fence_waits_for_a_prepared_write_of_the_account(database: PostgresDatabase) -> None:
    account = unique("prepared")
    fences = WriteFences()
    async with database.transaction() as tx:
        assert await fences.check(tx, [account]) == {}
        await tx.execute("PREPARE TRANSACTION 'fence-test'")  # keeps the account's fence lock, shared
    try:
        with pytest.raises(storage.TransientError):  # lock_not_available: the prepared write holds it
            async with database.transaction() as tx:
                await tx.execute("SET LOCAL lock_timeout = '200ms'")
                await fences.fence(tx, account, "rb-2", "shard-b")
    finally:
        await asyncio.to_thread(commit_prepared, database.url, "fence-test")
    async with database.transaction() as tx:
        await tx.execute("SET LOCAL lock_timeout = '2s'")
        await fences.fence(tx, account, "rb-2", "shard-b")
    async with database.transaction() as tx:
        assert (await fences.check(tx, [account]))[account].rebalance_id == "rb-2"


def commit_prepared(url: str, gid: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"COMMIT PREPARED '{gid}'".encode())


async def test_only_a_moved_accounts_events_may_be_deleted(database: PostgresDatabase) -> None:
    store = CreditsStore(OlderTopology([Shard.of("shard-a", database)]))
    account = unique("leaving")
    await fund(store, account)
    with pytest.raises(storage.CheckViolation):
        await database.execute("DELETE FROM event_store WHERE account_id = ?", (account,))
    with pytest.raises(storage.CheckViolation):
        await database.execute("UPDATE event_store SET body = '{}' WHERE account_id = ?", (account,))
    async with database.transaction() as tx:
        await WriteFences().mark_moved(tx, account, "rb-3", "shard-b")
        assert await tx.execute("DELETE FROM event_store WHERE account_id = ?", (account,)) == 1
    with pytest.raises(storage.CheckViolation):
        await database.execute("UPDATE event_store SET body = '{}'")
    await store.close()
