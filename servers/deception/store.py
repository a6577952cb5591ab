"""The deception service's persistence: one store, a part per concept, on SQLite or PostgreSQL.

The domain keeps its books in memory (`SessionBook`, `AlertBook`, `DecoySelector`,
`HoneytokenRegistry`); the store is what they are rebuilt from at start and what every change
is written to, in the transaction of the request or intake batch that made it. Methods taking
a `Transaction` work inside the caller's transaction, so a change to the books and its record
commit together; the others open their own. SQL is the same on both backends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from servers.deception.activity_store import ActivityStore
from servers.deception.alert_store import AlertStore
from servers.deception.honeytokens import HoneytokenKind, HoneytokenRecord
from servers.deception.installation import Installation
from servers.deception.quality import QualityReport
from servers.deception.records import to_json
from servers.deception.selection_store import SelectionStore
from servers.deception.synthetic import DatasetKind
from servers.mesh.storage import Database, Transaction
from servers.mesh.timestamps import from_micros, to_micros


def seed_digest(installation: Installation) -> str:
    """What the store keeps to recognise an installation: a tagged SHA-256 of its seed."""
    tag = b"shieldx.deception.installation.v1\x00"
    return hashlib.sha256(tag + installation.seed.to_bytes(16, "big")).hexdigest()


@dataclass(frozen=True)
class InstallationRecord:
    """The installation the store's data belongs to."""

    seed_digest: str
    """`seed_digest` of its seed."""
    create_time: datetime
    """When the installation was set up."""
    file_path: str
    """Where its file was when it was recorded."""


@dataclass(frozen=True)
class BatchRecord:
    """A synthetic data batch as registered when its stream started."""

    batch_id: str
    """Unique id."""
    kind: DatasetKind
    """What it holds."""
    seed: int
    """Seed of its SeedSequence."""
    generator_version: str
    """The generator that made it."""
    row_count: int
    """Rows asked for."""
    chunk_size: int
    """Rows per chunk asked for (0: the default)."""
    honeytoken_count: int
    """Honeytokens planted."""
    create_time: datetime
    """When it was created (the planted honeytokens' mint time)."""
    requested_by: str
    """Subject of the caller's token ("anonymous" without auth)."""


def quality_json(report: QualityReport) -> str:
    """A quality report as the JSON the batch record keeps."""
    return to_json(
        [
            {"column": c.column, "metric": c.metric.name.lower(), "statistic": c.statistic, "score": c.score}
            for c in report.columns
        ]
    )


class HoneytokenStore:
    """Registered honeytokens (fingerprints, never secrets)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def load(self, tx: Transaction) -> list[HoneytokenRecord]:
        """Every registered honeytoken."""
        rows = await tx.fetchall("SELECT * FROM honeytokens ORDER BY create_time_us, honeytoken_id")
        return [
            HoneytokenRecord(
                honeytoken_id=r["honeytoken_id"],
                kind=HoneytokenKind(r["kind"]),
                username=r["username"],
                batch_id=r["batch_id"],
                row_index=int(r["row_index"]),
                create_time=from_micros(r["create_time_us"]),
                fingerprint=r["fingerprint"],
            )
            for r in rows
        ]

    async def save(self, tx: Transaction, records: Sequence[HoneytokenRecord]) -> None:
        """Register honeytokens; one registered before (a regenerated batch) is left as it is."""
        if records:
            await tx.executemany(
                "INSERT INTO honeytokens (honeytoken_id, kind, username, batch_id, row_index, create_time_us,"
                " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (honeytoken_id) DO NOTHING",
                [
                    (
                        r.honeytoken_id,
                        r.kind.value,
                        r.username,
                        r.batch_id,
                        r.row_index,
                        to_micros(r.create_time),
                        r.fingerprint,
                    )
                    for r in records
                ],
            )


class BatchStore:
    """Synthetic data batches."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, tx: Transaction, batch: BatchRecord) -> None:
        """Register a synthetic batch as its stream starts."""
        await tx.execute(
            "INSERT INTO synthetic_batches (batch_id, kind, seed, generator_version, row_count, chunk_size,"
            " honeytoken_count, create_time_us, requested_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch.batch_id,
                batch.kind.value,
                str(batch.seed),
                batch.generator_version,
                batch.row_count,
                batch.chunk_size,
                batch.honeytoken_count,
                to_micros(batch.create_time),
                batch.requested_by,
            ),
        )

    async def get(self, batch_id: str) -> BatchRecord | None:
        """A registered batch."""
        row = await self.database.fetchone("SELECT * FROM synthetic_batches WHERE batch_id = ?", (batch_id,))
        if row is None:
            return None
        return BatchRecord(
            batch_id=row["batch_id"],
            kind=DatasetKind(row["kind"]),
            seed=int(row["seed"]),
            generator_version=row["generator_version"],
            row_count=int(row["row_count"]),
            chunk_size=int(row["chunk_size"]),
            honeytoken_count=int(row["honeytoken_count"]),
            create_time=from_micros(row["create_time_us"]),
            requested_by=row["requested_by"],
        )

    async def planted_by(self, tx: Transaction, kind: DatasetKind, seed: int) -> str | None:
        """The batch that planted honeytokens in `kind` data generated from `seed`, if one did."""
        value = await tx.fetchval(
            "SELECT batch_id FROM synthetic_batches WHERE kind = ? AND seed = ? AND honeytoken_count > 0"
            " ORDER BY create_time_us LIMIT 1",
            (kind.value, str(seed)),
        )
        return None if value is None else str(value)

    async def complete(self, batch_id: str, chunks: int, quality: QualityReport, now: datetime) -> None:
        """Record that a batch's last chunk was streamed, and its quality."""
        await self.database.execute(
            "UPDATE synthetic_batches SET complete_time_us = ?, chunk_count = ?, quality_overall = ?, quality = ?"
            " WHERE batch_id = ?",
            (to_micros(now), chunks, quality.overall_score, quality_json(quality), batch_id),
        )


class DeceptionStore:
    """Every table of the deception service, a part per concept."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.activity = ActivityStore(database)
        """Interactions, sessions and timelines."""
        self.alerts = AlertStore(database)
        """Alerts and their notifications to compliance."""
        self.selections = SelectionStore(database)
        """The decoy selection log and evidence."""
        self.honeytokens = HoneytokenStore(database)
        """Honeytoken fingerprints."""
        self.batches = BatchStore(database)
        """Synthetic data batches."""

    async def installation(self) -> InstallationRecord | None:
        """The installation recorded with the data, if any."""
        row = await self.database.fetchone("SELECT seed_digest, create_time_us, file_path FROM installation")
        if row is None:
            return None
        return InstallationRecord(row["seed_digest"], from_micros(row["create_time_us"]), row["file_path"])

    async def record_installation(self, installation: Installation, file_path: str, now: datetime) -> None:
        """Record (or replace) the installation the data belongs to."""
        await self.database.execute(
            "INSERT INTO installation (singleton, seed_digest, create_time_us, file_path, record_time_us)"
            " VALUES (1, ?, ?, ?, ?) ON CONFLICT (singleton) DO UPDATE SET seed_digest = excluded.seed_digest,"
            " create_time_us = excluded.create_time_us, file_path = excluded.file_path,"
            " record_time_us = excluded.record_time_us",
            (seed_digest(installation), to_micros(installation.created_at), file_path, to_micros(now)),
        )
