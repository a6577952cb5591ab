"""Rebuild the credits read models by replaying every stored event, with a progress bar on stderr.

    python -m servers.credits.rebuild [--config credits.yaml]

Events are read in (account, version) order in short batches while the server keeps running;
then, in one transaction that holds off writers of the read models, the accounts written
meanwhile are caught up and the read models and checkpoint are swapped for the replayed rows.
The rows come from the same functions the live path uses, so a rebuild of a healthy ledger
reproduces its read models exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from servers.credits.account import AccountState
from servers.credits.events import (
    ReservationCancelled,
    ReservationCommitted,
    ReservationExpired,
    Reserved,
    decode_event,
)
from servers.credits.eventstore import EventStore, Instants
from servers.credits.projection import Projection, checkpoint_slot
from servers.credits.readmodels import BalanceRow, ReservationClosed, ReservationRow, balance_row, reservation_change
from servers.mesh.config import ConfigError, load_config
from servers.mesh.storage import Database, open_database

Progress = Callable[[int, int], None]
"""Called with (events replayed, events stored when the rebuild began)."""

MIGRATIONS = ("servers.mesh.migrations", "servers.credits.migrations")
_RESERVATION_EVENTS = frozenset(
    kind.TYPE for kind in (Reserved, ReservationCommitted, ReservationCancelled, ReservationExpired)
)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What a rebuild replayed."""

    events: int
    accounts: int
    reservations: int
    checkpoint: int
    """Highest event position applied."""
    seconds: float
    replay_seconds: float
    """Of `seconds`, the time spent reading and replaying events before the swap."""

    @property
    def events_per_second(self) -> float:
        """Replay rate over the whole rebuild."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


class _Replayer:
    """Folds events given in (account, version) order into read-model rows, one account at a time."""

    def __init__(self) -> None:
        self.balances: dict[str, BalanceRow] = {}
        self.reservations: dict[tuple[str, str], ReservationRow] = {}
        self.events = 0
        self._state: AccountState | None = None
        self._position = 0

    def feed(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Replay raw `(account_id, version, type, body, occurred_at, trace_id, position)` rows."""
        # The hot loop of every rebuild: names bound locally, times converted only when stored
        # as text, and the reservation projection asked only about reservation events.
        required = Instants.required
        reservations = self.reservations
        state = self._state
        for account_id, version, type_name, body, stored_at, trace_id, position in rows:
            if state is None or state.account_id != account_id:
                self.finish()
                state = self._state = AccountState(account_id)
            occurred_at = stored_at if type(stored_at) is datetime else required(stored_at)
            event = decode_event(account_id, version, type_name, body, occurred_at, trace_id)
            state.apply(event)
            self._position = position
            self.events += 1
            if type_name not in _RESERVATION_EVENTS:
                continue
            change = reservation_change(event, position)
            if isinstance(change, ReservationRow):
                reservations[(change.account_id, change.reservation_id)] = change
            elif isinstance(change, ReservationClosed):
                key = (change.account_id, change.reservation_id)
                reservations[key] = reservations[key].closed_by(change)

    def resume(self, state: AccountState) -> None:
        """Continue an account already replayed once from its state (for catching up)."""
        self.finish()
        self._state = state

    def finish(self) -> None:
        """Close the account being replayed."""
        if self._state is not None and self._state.exists:
            self.balances[self._state.account_id] = balance_row(self._state, self._position)
        self._state = None

    def checkpoints(self) -> dict[int, int]:
        """The checkpoint slots the live path would have written for these accounts."""
        slots: dict[int, int] = {}
        for row in self.balances.values():
            slot = checkpoint_slot(row.account_id)
            slots[slot] = max(slots.get(slot, 0), row.position)
        return slots


async def _read_ahead(batches: AsyncIterator[list[tuple[Any, ...]]]) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The same batches, the next one already requested while the caller works on the current one."""
    queue: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=2)

    async def fetch() -> None:
        try:
            async for rows in batches:
                await queue.put(rows)
        finally:
            await queue.put(None)

    fetcher = asyncio.create_task(fetch())
    try:
        while (rows := await queue.get()) is not None:
            yield rows
        await fetcher  # re-raises a failed read
    finally:
        if not fetcher.done():
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher


async def rebuild(database: Database, *, progress: Progress | None = None, batch: int = 20_000) -> RebuildReport:
    """Replay every event of `database` into fresh read models and swap them in."""
    began = time.perf_counter()
    events = EventStore(database.dialect)
    projection = Projection(database.dialect)
    counted = await database.fetchone("SELECT COUNT(*) FROM event_store")
    total = 0 if counted is None else int(counted[0])
    replayer = _Replayer()
    if database.dialect == "postgres":
        # One statement streamed through a server-side cursor: a consistent snapshot, no
        # per-row objects, and no lock beyond what any reader takes.
        async with database.transaction() as tx:
            batches = _read_ahead(tx.stream(events.REPLAY_QUERY, batch=batch))
            async for rows in batches:
                replayer.feed(rows)
                if progress is not None:
                    progress(replayer.events, total)
    else:
        # SQLite's transactions hold its one write lock: read in short batches instead.
        after: tuple[str, int] | None = None
        while True:
            async with database.transaction() as tx:
                rows = await events.replay_batch(tx, after, batch)
            replayer.feed(rows)
            if progress is not None:
                progress(replayer.events, total)
            if len(rows) < batch:
                break
            after = (rows[-1][0], int(rows[-1][1]))
    replayer.finish()
    replayed = time.perf_counter()
    async with database.transaction() as tx:
        await projection.lock(tx)
        latest = await tx.fetchall("SELECT account_id, MAX(version) FROM event_store GROUP BY account_id")
        for account_id, version in latest:
            seen = replayer.balances.get(account_id)
            seen_version = 0 if seen is None else seen.version
            if seen_version == int(version):
                continue
            loaded = await events.load(tx, account_id, up_to=seen_version) if seen_version else None
            replayer.resume(loaded.state if loaded else AccountState(account_id))
            replayer.feed(await events.replay_tail(tx, account_id, seen_version))
            replayer.finish()
        await projection.replace(tx, replayer.balances.values(), replayer.reservations.values(), replayer.checkpoints())
    if progress is not None:
        progress(replayer.events, max(total, replayer.events))
    checkpoint = max((row.position for row in replayer.balances.values()), default=0)
    return RebuildReport(
        replayer.events,
        len(replayer.balances),
        len(replayer.reservations),
        checkpoint,
        time.perf_counter() - began,
        replayed - began,
    )


class ProgressBar:
    """A one-line progress bar redrawn in place (at most ten times a second)."""

    def __init__(self, stream: TextIO, label: str = "events", width: int = 30) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self._began = time.perf_counter()
        self._drawn = 0.0

    def update(self, done: int, total: int) -> None:
        """Redraw for `done` of `total`."""
        now = time.perf_counter()
        if now - self._drawn < 0.1 and done < total:
            return
        self._drawn = now
        share = 1.0 if total <= 0 else min(done / total, 1.0)
        filled = int(share * self.width)
        rate = done / max(now - self._began, 1e-9)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {share:4.0%} {done:,}/{total:,} {self.label}"
            f"  {rate:,.0f}/s"
        )
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        self.stream.write("\n")
        self.stream.flush()


async def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m servers.credits.rebuild", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--config", help="YAML config file (default: $SHIELDX_CONFIG)")
    parser.add_argument("--data-dir", help="where the SQLite store lives (default: from the config)")
    parser.add_argument("--batch", type=int, default=20_000, help="events read per query")
    args = parser.parse_args(argv)
    try:
        config = load_config("credits", args.config)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    database = await open_database(
        "credits",
        data_dir=config.data_dir,
        database_url=config.database_url,
        schema=config.database_schema or None,
        migrations=MIGRATIONS,
    )
    bar = ProgressBar(sys.stderr)
    try:
        report = await rebuild(database, progress=bar.update, batch=args.batch)
    finally:
        bar.close()
        await database.close()
    print(
        f"rebuilt the credits read models: {report.events:,} events, {report.accounts:,} accounts,"
        f" {report.reservations:,} reservations in {report.seconds:.2f} s"
        f" ({report.events_per_second:,.0f} events/s); checkpoint at position {report.checkpoint}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: rebuild the read models of the configured credits store."""
    return asyncio.run(_run(argv))


if __name__ == "__main__":
    sys.exit(main())
