"""Recovery of cross-shard transfers on real PostgreSQL shards: every in-doubt prepared half is
finished as the coordinator log decides, and presumed aborted when the log holds no decision.

Each case prepares real halves (`PREPARE TRANSACTION` under the coordinator's names) on two
shard databases, writes the coordinator log as a crash would have left it, runs one recovery
pass and reads what the shards kept.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from servers.credits.placement import AccountPlacement, Shard
from servers.credits.shards import open_shard_database
from servers.credits.twophase import CoordinatorLog, Decision, PreparedName, Side, TransferCoordinator, TransferRecord
from servers.mesh.postgres import PostgresDatabase
from servers.mesh.storage import open_database
from tests.support.pgcluster import PgNode, workspace_or_skip

SHARDS = ("shard_a", "shard_b")


@pytest.fixture(scope="module")
def node() -> Iterator[PgNode]:
    with workspace_or_skip() as workspace:
        node = workspace.primary("twophase", settings={"max_prepared_transactions": "16"})
        with psycopg.connect(node.dsn, autocommit=True) as connection:
            for name in SHARDS:
                connection.execute(f"CREATE DATABASE {name}")
        for name in SHARDS:
            with psycopg.connect(node.dsn_for(name), autocommit=True) as connection:
                connection.execute("CREATE TABLE halves (gid TEXT PRIMARY KEY)")
        yield node


@pytest.fixture
async def shards(node: PgNode) -> AsyncIterator[tuple[Shard, Shard]]:
    databases: list[PostgresDatabase] = []
    try:
        for name in SHARDS:
            databases.append(await open_shard_database(node.dsn_for(name), pool_size=2))
        yield Shard.of(SHARDS[0], databases[0]), Shard.of(SHARDS[1], databases[1])
    finally:
        for database in databases:
            await database.close()


@pytest.fixture
async def coordinator(tmp_path: Path, shards: tuple[Shard, Shard]) -> AsyncIterator[TransferCoordinator]:
    """A coordinator with a log of its own (so its own id), finishing halves found at any age."""
    database = await open_database("credits", data_dir=tmp_path, migrations=["servers.credits.coordinator_migrations"])
    coordinator = TransferCoordinator(
        CoordinatorLog(database), AccountPlacement(list(shards)), CollectorRegistry(), in_doubt_after_seconds=0.0
    )
    await coordinator.start()
    try:
        yield coordinator
    finally:
        await coordinator.close()
        await database.close()


def prepare_half(node: PgNode, shard: str, name: PreparedName) -> None:
    """A prepared transaction under `name` on `shard` whose one change is a row named after it."""
    with psycopg.connect(node.dsn_for(shard), autocommit=True) as connection:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO halves (gid) VALUES (%s)", (name.gid,))
        connection.execute(f"PREPARE TRANSACTION '{name.gid}'")


def still_prepared(node: PgNode, name: PreparedName) -> bool:
    with psycopg.connect(node.dsn, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", (name.gid,)).fetchone()
    return row is not None and row[0] == 1


def kept(node: PgNode, shard: str, name: PreparedName) -> bool:
    """Whether the half's change is committed on the shard."""
    with psycopg.connect(node.dsn_for(shard), autocommit=True) as connection:
        return connection.execute("SELECT 1 FROM halves WHERE gid = %s", (name.gid,)).fetchone() is not None


async def write_log(log: CoordinatorLog, transfer_id: str, decision: Decision | None) -> None:
    if decision is Decision.COMMIT:
        assert await log.record_commit(TransferRecord(transfer_id, "a", "b", SHARDS[0], SHARDS[1], 5, "req"))
    elif decision is Decision.ABORT:
        assert await log.presume_abort(transfer_id) is Decision.ABORT


def unresolved(coordinator: TransferCoordinator) -> float:
    """The gauge of halves left in doubt after the latest pass."""
    [metric] = coordinator.unresolved.collect()
    return metric.samples[0].value


HALVES = {"both": (Side.FROM, Side.TO), "from only": (Side.FROM,), "to only": (Side.TO,), "neither": ()}


@pytest.mark.parametrize("prepared", list(HALVES))
@pytest.mark.parametrize("logged", [None, Decision.COMMIT, Decision.ABORT], ids=["no decision", "commit", "abort"])
async def test_recovery_finishes_each_prepared_half_as_the_log_decides_and_presumes_abort(
    node: PgNode, coordinator: TransferCoordinator, logged: Decision | None, prepared: str
) -> None:
    transfer_id = uuid.uuid4().hex
    from_name, to_name = coordinator.names(transfer_id)
    places = {Side.FROM: (SHARDS[0], from_name), Side.TO: (SHARDS[1], to_name)}
    for side in HALVES[prepared]:
        prepare_half(node, *places[side])
    await write_log(coordinator.log, transfer_id, logged)

    finished = await coordinator.recover()

    # With no decision logged, a half found in doubt is presumed aborted (and ABORT logged first).
    expected = logged or (Decision.ABORT if HALVES[prepared] else None)
    assert finished == len(HALVES[prepared])
    assert await coordinator.log.decision(transfer_id) is expected
    for side, (shard, name) in places.items():
        assert not still_prepared(node, name), f"{side} half left in doubt"
        assert kept(node, shard, name) is (side in HALVES[prepared] and expected is Decision.COMMIT), side
    assert unresolved(coordinator) == 0


async def test_recovery_leaves_running_young_and_foreign_halves_alone(
    node: PgNode, coordinator: TransferCoordinator, shards: tuple[Shard, Shard]
) -> None:
    running, young = uuid.uuid4().hex, uuid.uuid4().hex
    foreign = PreparedName("0123456789abcdef", uuid.uuid4().hex, Side.FROM)
    for name in (coordinator.names(running)[0], foreign):
        prepare_half(node, SHARDS[0], name)
    with coordinator.running(running):
        assert await coordinator.recover() == 0
    assert still_prepared(node, coordinator.names(running)[0]) and still_prepared(node, foreign)
    assert await coordinator.log.decision(running) is None, "a running transfer is not presumed aborted"

    coordinator.in_doubt_after_seconds = 3600.0
    prepare_half(node, SHARDS[1], coordinator.names(young)[1])
    assert await coordinator.recover() == 0
    assert unresolved(coordinator) == 2, "both halves (no longer running, and young) are counted in doubt"
    assert await coordinator.log.decision(young) is None

    coordinator.in_doubt_after_seconds = 0.0
    assert await coordinator.recover() == 2
    assert not still_prepared(node, coordinator.names(young)[1])
    assert still_prepared(node, foreign), "another coordinator's half is its own to finish"
    await coordinator.prepared.finish(shards[0], foreign, Decision.ABORT)
