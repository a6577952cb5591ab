"""Two-phase commit bookkeeping: prepared transaction names, the coordinator log's once-only decisions, settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servers.credits.alertstreams import ShardPlaces
from servers.credits.fences import Fence, FenceState
from servers.credits.settings import CreditsSettings
from servers.credits.twophase import CoordinatorLog, Decision, PreparedName, Side, TransferRecord
from servers.mesh import errors
from servers.mesh.config import ConfigError, build
from servers.mesh.storage import Database, open_database

COORDINATOR = "0123456789abcdef"
TRANSFER = "f" * 32


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[CoordinatorLog]:
    database: Database = await open_database(
        "credits", data_dir=tmp_path, migrations=["servers.credits.coordinator_migrations"]
    )
    try:
        yield CoordinatorLog(database)
    finally:
        await database.close()


def record(transfer_id: str) -> TransferRecord:
    return TransferRecord(transfer_id, "from", "to", "shard-a", "shard-b", 5, "req")


def test_a_prepared_name_says_whose_transfer_and_which_half_it_holds() -> None:
    name = PreparedName(COORDINATOR, TRANSFER, Side.TO)
    assert name.gid == f"shieldx-credits:{COORDINATOR}:{TRANSFER}:to"
    assert PreparedName.parse(name.gid) == name


@pytest.mark.parametrize(
    "gid",
    [
        "",
        "other-app:1",
        f"shieldx-credits:{COORDINATOR}:{TRANSFER}:sideways",
        f"shieldx-credits:{COORDINATOR.upper()}:{TRANSFER}:from",
        f"shieldx-credits:{COORDINATOR}:{TRANSFER[:-1]}:from",
        f"shieldx-credits:{COORDINATOR}:{TRANSFER}:from' OR '1",
    ],
)
def test_prepared_transactions_of_others_are_not_ours(gid: str) -> None:
    assert PreparedName.parse(gid) is None


async def test_the_coordinator_id_is_made_once_and_kept(log: CoordinatorLog) -> None:
    first = await log.coordinator_id()
    assert len(first) == 16 and int(first, 16) >= 0
    assert await log.coordinator_id() == first


async def test_a_commit_logged_first_wins_over_a_presumed_abort(log: CoordinatorLog) -> None:
    assert await log.record_commit(record("1" * 32))
    assert await log.presume_abort("1" * 32) is Decision.COMMIT
    assert await log.decision("1" * 32) is Decision.COMMIT


async def test_an_abort_presumed_first_makes_the_coordinator_abort(log: CoordinatorLog) -> None:
    assert await log.presume_abort("2" * 32) is Decision.ABORT
    assert not await log.record_commit(record("2" * 32)), "the coordinator learns it must abort"
    assert await log.decision("2" * 32) is Decision.ABORT
    assert await log.decision("3" * 32) is None


async def test_concurrent_commits_are_logged_together_each_answered(log: CoordinatorLog) -> None:
    await log.presume_abort("a" * 32)
    ids = [f"{i:032x}" for i in range(150)] + ["a" * 32]
    answers = await asyncio.gather(*(log.record_commit(record(i)) for i in ids))
    assert answers == [True] * 150 + [False]
    assert all([await log.decision(i) is Decision.COMMIT for i in ids[:150]])


async def test_old_decisions_are_forgotten_unless_a_half_is_still_in_doubt(log: CoordinatorLog) -> None:
    await log.record_commit(record("4" * 32))
    await log.record_commit(record("5" * 32))
    assert await log.purge(-1.0, keep=["5" * 32]) == 1
    assert await log.decision("4" * 32) is None
    assert await log.decision("5" * 32) is Decision.COMMIT


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"two_phase_crash_point": "after_lunch"}, "two_phase_crash_point"),
        ({"shard_pool_size": 0}, "shard_pool_size"),
        ({"two_phase_recovery_interval_seconds": 0.0}, "two_phase_recovery_interval_seconds"),
        ({"in_doubt_after_seconds": -1.0}, "in_doubt_after_seconds"),
        ({"in_doubt_after_seconds": float("nan")}, "in_doubt_after_seconds"),
    ],
)
def test_nonsense_sharding_settings_are_refused_by_name(changes: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=f"credits.{named}"):
        build(CreditsSettings, changes, {}, "SHIELDX_CREDITS__").check()


def test_the_crash_points_are_accepted_for_tests() -> None:
    for point in ("", "after_prepare", "after_decision"):
        CreditsSettings(topology=True, two_phase_crash_point=point).check()


def test_a_default_reservation_lifetime_beyond_the_longest_is_refused() -> None:
    settings = build(CreditsSettings, {"default_reservation_ttl_seconds": 7200.0}, {}, "SHIELDX_CREDITS__")
    settings.check()
    with pytest.raises(ConfigError, match=r"credits\.default_reservation_ttl_seconds"):
        build(CreditsSettings, {"max_reservation_ttl_seconds": 60.0}, {}, "SHIELDX_CREDITS__").check()


def test_a_refused_write_says_whether_the_account_is_moving_or_gone() -> None:
    moving = Fence("acct", FenceState.FENCED, "rb-1", "shard-b").refusal()
    moved = Fence("acct", FenceState.MOVED, "rb-1", "shard-b").refusal()
    assert isinstance(moving, errors.Unavailable) and moving.reason == "ACCOUNT_MOVING" and moving.retry_after
    assert moved.reason == "ACCOUNT_MOVED" and moved.metadata == {"account_id": "acct", "shard_id": "shard-b"}


def test_a_merged_alert_feed_token_round_trips_and_forgeries_are_refused() -> None:
    place = ShardPlaces({"shard-a": 3, "shard-b": 0})
    assert ShardPlaces.parse(place.token()) == place
    for forged in ("", "!!", ShardPlaces({"shard-a": -1}).token(), "czE6WzFd", "czE6eyJhIjoiMSJ9"):
        with pytest.raises(errors.InvalidArgument) as refused:
            ShardPlaces.parse(forged)
        assert refused.value.metadata["field"] == "resume_token"
