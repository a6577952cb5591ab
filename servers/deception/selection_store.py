"""Persistence of decoy selection: every selection with its seed and draw, its feedback, and the learned evidence."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servers.deception.bandit import Selection, SelectionCounts
from servers.deception.policies import ArmScore, SelectionPolicy
from servers.deception.policy_evaluation import LoggedRound
from servers.deception.records import to_json
from servers.mesh.storage import Database, Row, Transaction
from servers.mesh.timestamps import to_micros


@dataclass(frozen=True)
class BanditHistory:
    """Everything a `DecoySelector` is rebuilt from."""

    evidence: dict[str, dict[str, tuple[float, float]]]
    """Bucket → decoy → discounted (engagements, non-engagements)."""
    counts: list[SelectionCounts]
    """Totals per bucket and decoy."""
    recent: list[tuple[Selection, bool]]
    """The latest selections, oldest first, with whether each has had feedback."""
    draws: int
    """Selections made so far (the next draw number)."""


@dataclass(frozen=True)
class SelectionContext:
    """What a selection was made for, logged beside it."""

    source_address: str
    """The attacker's address ("" if not given)."""
    session_id: str
    """The attacker's session ("" if not given)."""
    features: Mapping[str, str]
    """The context's features as given."""


def _selection(row: Row) -> Selection:
    return Selection(
        selection_id=row["selection_id"],
        bucket=row["bucket"],
        decoy_id=row["decoy_id"],
        policy=SelectionPolicy(row["policy"]),
        seed=int(row["seed"]),
        draw=int(row["draw"]),
        scores=tuple(ArmScore(d, float(s), float(a), float(b)) for d, s, a, b in json.loads(row["scores"])),
        propensity=float(row["propensity"]),
        select_time=int(row["select_time_us"]) / 1e6,
    )


class SelectionStore:
    """The selection log and the evidence per context bucket."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def load(self, tx: Transaction, max_recent: int) -> BanditHistory:
        """The selection policies' evidence, totals and the latest `max_recent` selections."""
        evidence = {
            r["bucket"]: {decoy: (float(e), float(i)) for decoy, (e, i) in json.loads(r["evidence"]).items()}
            for r in await tx.fetchall("SELECT bucket, evidence FROM bandit_evidence")
        }
        counts = [
            SelectionCounts(r[0], r[1], int(r[2]), int(r[3]), float(r[4] or 0.0))
            for r in await tx.fetchall(
                "SELECT bucket, decoy_id, COUNT(*), COUNT(reward), SUM(reward) FROM decoy_selections"
                " GROUP BY bucket, decoy_id"
            )
        ]
        recent_rows = await tx.fetchall("SELECT * FROM decoy_selections ORDER BY draw DESC LIMIT ?", (max_recent,))
        recent = [(_selection(r), r["reward"] is not None) for r in reversed(recent_rows)]
        draws = await tx.fetchval("SELECT MAX(draw) FROM decoy_selections")
        return BanditHistory(evidence, counts, recent, 0 if draws is None else int(draws) + 1)

    async def save(self, tx: Transaction, selection: Selection, context: SelectionContext) -> None:
        """Log a selection with its seed and draw."""
        await tx.execute(
            "INSERT INTO decoy_selections (selection_id, draw, bucket, decoy_id, policy, seed, scores, propensity,"
            " select_time_us, source_address, session_id, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                selection.selection_id,
                selection.draw,
                selection.bucket,
                selection.decoy_id,
                selection.policy.value,
                str(selection.seed),
                to_json([[s.decoy_id, s.score, s.posterior_alpha, s.posterior_beta] for s in selection.scores]),
                selection.propensity,
                round(selection.select_time * 1e6),
                context.source_address,
                context.session_id,
                to_json(dict(context.features)),
            ),
        )

    async def save_feedback(
        self,
        tx: Transaction,
        selection_id: str,
        reward: float,
        now: datetime,
        bucket: str,
        evidence: Mapping[str, tuple[float, float]],
    ) -> None:
        """Record a selection's reward and its bucket's evidence after the update."""
        await tx.execute(
            "UPDATE decoy_selections SET reward = ?, feedback_time_us = ? WHERE selection_id = ?",
            (reward, to_micros(now), selection_id),
        )
        await tx.execute(
            "INSERT INTO bandit_evidence (bucket, evidence, update_time_us) VALUES (?, ?, ?)"
            " ON CONFLICT (bucket) DO UPDATE SET evidence = excluded.evidence,"
            " update_time_us = excluded.update_time_us",
            (bucket, to_json({d: list(v) for d, v in evidence.items()}), to_micros(now)),
        )

    async def logged_rounds(self, start: datetime | None, end: datetime | None, limit: int) -> list[LoggedRound]:
        """Selections with feedback in [start, end), oldest first; the latest `limit` of them."""
        clauses = ["reward IS NOT NULL"]
        params: list[Any] = []
        if start is not None:
            clauses.append("select_time_us >= ?")
            params.append(to_micros(start))
        if end is not None:
            clauses.append("select_time_us < ?")
            params.append(to_micros(end))
        rows = await self.database.fetchall(
            "SELECT bucket, decoy_id, reward, propensity FROM decoy_selections"
            f" WHERE {' AND '.join(clauses)} ORDER BY draw DESC LIMIT ?",
            (*params, limit),
        )
        return [LoggedRound(r[0], r[1], float(r[2]), float(r[3])) for r in reversed(rows)]
