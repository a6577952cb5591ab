"""The read models written by the live path equal a replay of the same events, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from servers.credits.account import AccountState
from servers.credits.audit import GENESIS_HASH, seal
from servers.credits.commands import AccountCommand, CancelReservation, CommitReservation, Consume, Purchase, Reserve
from servers.credits.domain import decide
from servers.credits.events import Event, SealedPaymentReference
from servers.credits.eventstore import EventStore
from servers.credits.projection import CHECKPOINT_SLOTS, Projection, checkpoint_slot
from servers.credits.readmodels import BalanceRow, ReservationRow, ReservationState
from servers.credits.rebuild import MIGRATIONS, rebuild
from servers.mesh.storage import Database, open_database

START = datetime(2026, 1, 1, tzinfo=UTC)
REFERENCE = SealedPaymentReference("v1:test:QUJD", "test:ab")


@pytest.fixture
async def database(store_config: dict[str, str]) -> AsyncIterator[Database]:
    db = await open_database(
        "credits",
        data_dir=store_config["data_dir"],
        database_url=store_config["database_url"],
        schema=store_config.get("database_schema"),
        migrations=MIGRATIONS,
    )
    yield db
    await db.close()


class Ledger:
    """Accounts decided in memory and recorded through the live path, a batch per call."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.events = EventStore(database.dialect)
        self.projection = Projection(database.dialect)
        self.states: dict[str, AccountState] = {}
        self.heads: dict[str, bytes] = {}
        self.now = START

    def decide(self, command: AccountCommand) -> list[Event]:
        state = self.states.setdefault(command.account_id, AccountState(command.account_id))
        self.now += timedelta(seconds=1)
        events = decide(state, command, now=self.now).events
        for event in events:
            state.apply(event)
        return list(events)

    async def record(self, *batches: Sequence[Event]) -> None:
        """Append and project several accounts' events in one transaction (as a group does)."""
        entries = []
        for events in batches:
            account_id = events[0].account_id
            for event, row in zip(events, seal(events, self.heads.get(account_id, GENESIS_HASH)), strict=True):
                entries.append((event, row, ""))
                self.heads[account_id] = row.hash
        async with self.database.transaction() as tx:
            positions = await self.events.insert(tx, entries)
            changes = []
            start = 0
            for events in batches:
                state = self.states[events[0].account_id]
                changes.append((state.copy(), events, positions[start : start + len(events)]))
                start += len(events)
            await self.projection.record_many(tx, changes)


async def read_models(database: Database) -> tuple[list[BalanceRow], list[ReservationRow], dict[int, int]]:
    projection = Projection(database.dialect)
    async with database.transaction() as tx:
        return await projection.balances(tx), await projection.all_reservations(tx), await projection.checkpoints(tx)


async def test_reservations_opened_and_closed_in_one_batch_arrive_closed(database: Database) -> None:
    ledger = Ledger(database)
    await ledger.record(ledger.decide(Purchase("alice", 100, REFERENCE)), ledger.decide(Purchase("bob", 50, REFERENCE)))
    older = ledger.decide(Reserve("alice", "older", 10, ttl=timedelta(hours=1)))
    await ledger.record(older)
    # One batch: bob reserves and commits part of it; alice reserves, cancels, and closes the older one.
    bob = ledger.decide(Reserve("bob", "r1", 20, ttl=timedelta(hours=1)))
    bob += ledger.decide(CommitReservation("bob", "r1", 5))
    alice = ledger.decide(Reserve("alice", "r2", 30, ttl=timedelta(hours=1)))
    alice += ledger.decide(CancelReservation("alice", "r2"))
    alice += ledger.decide(CommitReservation("alice", "older", None))
    alice += ledger.decide(Consume("alice", 1))
    await ledger.record(bob, alice)

    balances, reservations, checkpoints = await read_models(database)
    by_id = {(row.account_id, row.reservation_id): row for row in reservations}
    assert by_id["bob", "r1"].state is ReservationState.COMMITTED
    assert (by_id["bob", "r1"].committed, by_id["bob", "r1"].released) == (5, 15)
    assert by_id["alice", "r2"].state is ReservationState.CANCELLED
    assert by_id["alice", "r2"].released == 30
    assert by_id["alice", "older"].state is ReservationState.COMMITTED
    assert by_id["alice", "older"].committed == 10
    assert {row.account_id: row.available for row in balances} == {"alice": 89, "bob": 45}
    assert {row.account_id: row.held for row in balances} == {"alice": 0, "bob": 0}
    assert set(checkpoints) == {checkpoint_slot("alice"), checkpoint_slot("bob")}

    live = await read_models(database)
    await rebuild(database)
    assert await read_models(database) == live


async def test_checkpoint_slots_keep_the_highest_position_of_their_accounts(database: Database) -> None:
    ledger = Ledger(database)
    names = [f"acct-{i:03d}" for i in range(3 * CHECKPOINT_SLOTS)]
    await ledger.record(*(ledger.decide(Purchase(name, 10, REFERENCE)) for name in names))
    await ledger.record(*(ledger.decide(Consume(name, 1)) for name in names[:CHECKPOINT_SLOTS]))
    balances, _, checkpoints = await read_models(database)
    expected: dict[int, int] = {}
    for row in balances:
        slot = checkpoint_slot(row.account_id)
        expected[slot] = max(expected.get(slot, 0), row.position)
    assert checkpoints == expected
    async with database.transaction() as tx:
        assert await Projection(database.dialect).lag(tx) == 0
