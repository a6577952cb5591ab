"""Persistence of the evidence chain: append-only records, signed heads, purges."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servers.compliance.domain import EvidenceKind
from servers.compliance.evidence.domain import (
    GENESIS,
    EvidenceRecord,
    Observation,
    StoredLink,
    canonical_json,
    rfc3339,
)
from servers.compliance.evidence.signing import ChainHead
from servers.mesh.storage import Database, Row, Transaction, from_micros, to_micros

_COLUMNS = (
    "sequence, evidence_id, assessment_id, kind, target, passed, summary, details, collect_time, collect_us,"
    " probe_us, sha256, previous_chain_sha256, chain_sha256"
)


@dataclass(frozen=True)
class Purge:
    """A recorded purge: records through `through_sequence` removed; the chain resumes from its anchor."""

    purge_id: str
    purge_time: datetime
    through_sequence: int
    anchor_chain_sha256: str
    records: int


@dataclass(frozen=True)
class EvidenceFilter:
    """ListEvidence filters."""

    assessment_id: str = ""
    evidence_ids: tuple[str, ...] | None = None
    kind: EvidenceKind | None = None


class EvidenceStore:
    """The evidence tables."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def chain_end(self, tx: Transaction) -> tuple[int, str]:
        """(sequence, chain_sha256) of the last record, counting purged ones; genesis if none."""
        row = await tx.fetchone("SELECT sequence, chain_sha256 FROM evidence ORDER BY sequence DESC LIMIT 1")
        if row is not None:
            return int(row[0]), str(row[1])
        purge = await self._last_purge(tx)
        if purge is not None:
            return purge.through_sequence, purge.anchor_chain_sha256
        return 0, GENESIS

    async def append(self, tx: Transaction, records: Sequence[EvidenceRecord]) -> None:
        """Store records (already linked onto `chain_end`); a concurrent append collides on the sequence."""
        await tx.executemany(
            f"INSERT INTO evidence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.sequence,
                    r.evidence_id,
                    r.assessment_id,
                    int(r.kind),
                    r.observation.target,
                    r.observation.passed,
                    r.observation.summary,
                    canonical_json(r.observation.details),
                    rfc3339(r.observation.collect_time),
                    to_micros(r.observation.collect_time),
                    int(r.observation.probe_duration.total_seconds() * 1_000_000),
                    r.sha256,
                    r.previous_chain_sha256,
                    r.chain_sha256,
                )
                for r in records
            ],
        )

    async def add_head(self, tx: Transaction, head: ChainHead) -> None:
        """Store a signed head (one per sequence; a re-sign of the same end keeps the first)."""
        exists = await tx.fetchone("SELECT 1 FROM evidence_heads WHERE sequence = ?", (head.sequence,))
        if exists is None:
            await tx.execute(
                "INSERT INTO evidence_heads (sequence, chain_sha256, sign_us, signature, public_key)"
                " VALUES (?, ?, ?, ?, ?)",
                (head.sequence, head.chain_sha256, to_micros(head.sign_time), head.signature, head.public_key),
            )

    async def latest_head(self) -> ChainHead | None:
        """The newest signed head."""
        row = await self.database.fetchone(
            "SELECT sequence, chain_sha256, sign_us, signature, public_key FROM evidence_heads"
            " ORDER BY sequence DESC LIMIT 1"
        )
        if row is None:
            return None
        return ChainHead(int(row[0]), str(row[1]), from_micros(row[2]), str(row[3]), str(row[4]))

    async def head_at(self, sequence: int) -> ChainHead | None:
        """The head signed at `sequence` (the end of the assessment whose last record it is)."""
        row = await self.database.fetchone(
            "SELECT sequence, chain_sha256, sign_us, signature, public_key FROM evidence_heads WHERE sequence = ?",
            (sequence,),
        )
        if row is None:
            return None
        return ChainHead(int(row[0]), str(row[1]), from_micros(row[2]), str(row[3]), str(row[4]))

    async def links(self, through: int) -> list[StoredLink]:
        """Every kept record up to `through`, in chain order, as verification reads them."""
        rows = await self.database.fetchall(
            "SELECT sequence, evidence_id, kind, target, passed, details, collect_time, sha256,"
            " previous_chain_sha256, chain_sha256 FROM evidence WHERE sequence <= ? ORDER BY sequence",
            (through,),
        )
        return [
            StoredLink(
                int(r[0]),
                str(r[1]),
                EvidenceKind(int(r[2])),
                str(r[3]),
                bool(r[4]),
                _details(str(r[5])),
                str(r[6]),
                str(r[7]),
                str(r[8]),
                str(r[9]),
            )
            for r in rows
        ]

    async def anchor(self) -> tuple[int, str, int]:
        """Where verification starts: (sequence, chain_sha256) before the first kept record, and records purged."""
        async with self.database.transaction() as tx:
            purge = await self._last_purge(tx)
            total = await tx.fetchval("SELECT COALESCE(SUM(records), 0) FROM evidence_purges")
        if purge is None:
            return 0, GENESIS, 0
        return purge.through_sequence, purge.anchor_chain_sha256, int(total or 0)

    async def _last_purge(self, tx: Transaction) -> Purge | None:
        row = await tx.fetchone(
            "SELECT purge_id, purge_us, through_sequence, anchor_chain_sha256, records FROM evidence_purges"
            " ORDER BY through_sequence DESC LIMIT 1"
        )
        if row is None:
            return None
        return Purge(str(row[0]), from_micros(row[1]), int(row[2]), str(row[3]), int(row[4]))

    async def purge(self, older_than: datetime, now: datetime) -> Purge | None:
        """Remove records collected before `older_than` (a prefix of the chain), recording the purge."""
        cutoff = to_micros(older_than)
        async with self.database.transaction() as tx:
            row = await tx.fetchone(
                "SELECT sequence, chain_sha256 FROM evidence WHERE collect_us < ? ORDER BY sequence DESC LIMIT 1",
                (cutoff,),
            )
            if row is None:
                return None
            through, anchor = int(row[0]), str(row[1])
            removed = await tx.execute("DELETE FROM evidence WHERE sequence <= ?", (through,))
            purge = Purge(f"prg_{secrets.token_hex(8)}", now, through, anchor, removed)
            await tx.execute(
                "INSERT INTO evidence_purges (purge_id, purge_us, through_sequence, anchor_chain_sha256, records,"
                " older_than_us) VALUES (?, ?, ?, ?, ?, ?)",
                (purge.purge_id, to_micros(now), through, anchor, removed, cutoff),
            )
        return purge

    async def page(self, filters: EvidenceFilter, before_sequence: int | None, limit: int) -> list[EvidenceRecord]:
        """Newest first, filtered, before a sequence (paging)."""
        clauses: list[str] = ["1 = 1"]
        params: list[object] = []
        if filters.assessment_id:
            clauses.append("assessment_id = ?")
            params.append(filters.assessment_id)
        if filters.kind is not None:
            clauses.append("kind = ?")
            params.append(int(filters.kind))
        if filters.evidence_ids is not None:
            if not filters.evidence_ids:
                return []
            clauses.append(f"evidence_id IN ({', '.join('?' for _ in filters.evidence_ids)})")
            params.extend(filters.evidence_ids)
        if before_sequence is not None:
            clauses.append("sequence < ?")
            params.append(before_sequence)
        rows = await self.database.fetchall(
            f"SELECT {_COLUMNS} FROM evidence WHERE {' AND '.join(clauses)} ORDER BY sequence DESC LIMIT ?",
            (*params, limit),
        )
        return [record_from_row(row) for row in rows]

    async def of_assessment(self, assessment_id: str) -> list[EvidenceRecord]:
        """An assessment's evidence in chain order."""
        rows = await self.database.fetchall(
            f"SELECT {_COLUMNS} FROM evidence WHERE assessment_id = ? ORDER BY sequence", (assessment_id,)
        )
        return [record_from_row(row) for row in rows]


def _details(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def record_from_row(row: Row) -> EvidenceRecord:
    """A stored record."""
    seen = Observation(
        kind=EvidenceKind(int(row[3])),
        target=str(row[4]),
        passed=bool(row[5]),
        summary=str(row[6]),
        details=_details(str(row[7])),
        collect_time=from_micros(row[9]),
        probe_duration=from_micros(row[10]) - from_micros(0),
    )
    return EvidenceRecord(
        evidence_id=str(row[1]),
        assessment_id=str(row[2]),
        observation=seen,
        sequence=int(row[0]),
        sha256=str(row[11]),
        previous_chain_sha256=str(row[12]),
        chain_sha256=str(row[13]),
    )
