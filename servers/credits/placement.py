"""Where credits accounts live: a `Shard` is one database holding accounts (with its request
ledger, event store and projection); `AccountPlacement` chooses the shard of an account (the
single store here; `shards.TopologyPlacement` follows the sharding topology).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import psycopg

from servers.credits.eventstore import EventStore
from servers.credits.projection import Projection
from servers.mesh import errors
from servers.mesh.idempotency import RequestLedger
from servers.mesh.storage import Database

LEDGER_DOMAIN = "shieldx.credits.v1"
"""The ErrorInfo domain of the ledger's answers."""


@dataclass(frozen=True)
class Shard:
    """One database holding accounts, with the request ledger and SQL of its dialect."""

    name: str
    database: Database
    ledger: RequestLedger
    events: EventStore
    projection: Projection

    @classmethod
    def of(cls, name: str, database: Database) -> Shard:
        """The shard for a migrated credits database."""
        return cls(
            name,
            database,
            RequestLedger(database, LEDGER_DOMAIN),
            EventStore(database.dialect),
            Projection(database.dialect),
        )


class AccountPlacement:
    """Chooses the shard that holds an account: here the single store; see `shards.TopologyPlacement`.

    The methods below are what the store and the queries ask of any placement: where to write
    an account, where to read it, which shard serves each account (for scans over every
    shard), and the server's own store (`home`) for what belongs to no account.
    """

    sharded = False
    """True if accounts live on several shards (write fences are checked, scans are merged)."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        if not shards:
            raise ValueError("at least one shard is needed")
        self._shards = tuple(shards)

    @property
    def shards(self) -> tuple[Shard, ...]:
        """Every shard (for scans over all accounts)."""
        return self._shards

    @property
    def every_shard_open(self) -> bool:
        """True if `shards` holds every shard accounts may live on."""
        return True

    @property
    def home(self) -> Database:
        """The server's own store: signed heads, the cross-shard coordinator log."""
        return self._shards[0].database

    def shard_for(self, account_id: str) -> Shard:
        """The shard to write `account_id` on."""
        return self._shards[0]

    def shard_for_reading(self, account_id: str) -> Shard:
        """The shard (primary) serving `account_id`, writes fenced or not."""
        return self.shard_for(account_id)

    def primary_of(self, shard_id: str) -> Shard:
        """The shard named `shard_id`."""
        for shard in self._shards:
            if shard.name == shard_id:
                return shard
        raise errors.Unavailable(f"shard {shard_id!r} is not known", reason="SHARD_UNAVAILABLE")

    def shard_id_of(self, account_id: str) -> str:
        """The id of the shard serving `account_id`."""
        return self.shard_for(account_id).name

    def owners(self, account_ids: Sequence[str]) -> list[str]:
        """The shard serving each account, in order."""
        return [self._shards[0].name] * len(account_ids)

    @contextlib.asynccontextmanager
    async def reading(self, account_id: str, *, replica_ok: bool = False) -> AsyncIterator[Shard]:
        """The shard (or a replica of it, if `replica_ok`) to read `account_id` from."""
        yield self.shard_for(account_id)

    def replica_or_primary(self, shard: Shard) -> Shard:
        """What to scan for the whole of `shard`: a healthy replica of it where there is one."""
        return shard


UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction)
"""What a shard database raises when it is down, restarting, or a standby refusing writes."""


@contextlib.contextmanager
def unreachable_as_unavailable(placement: AccountPlacement, shard: Shard) -> Iterator[None]:
    """On shards, turn a database that cannot be reached into UNAVAILABLE `SHARD_UNAVAILABLE` with RetryInfo.

    The single store keeps its errors as they are (it has no other node to wait for).
    """
    if not placement.sharded:
        yield
        return
    try:
        yield
    except UNREACHABLE as error:
        raise errors.Unavailable(
            f"shard {shard.name!r} cannot be reached; retry shortly",
            retry_after=0.5,
            reason="SHARD_UNAVAILABLE",
            metadata={"shard_id": shard.name},
        ) from error
