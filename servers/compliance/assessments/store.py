"""Persistence of assessments, their control results, the latest result per control and score history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from servers.compliance.assessments.domain import FrameworkScore, Score
from servers.compliance.domain import ControlStatus, Framework
from servers.mesh.storage import Database, Row, Transaction, from_micros, maybe_datetime, to_micros


class AssessmentState:
    """The contract's AssessmentState numbers."""

    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(frozen=True)
class StoredResult:
    """One control's result in one assessment."""

    assessment_id: str
    control_id: str
    framework: Framework
    status: ControlStatus
    summary: str
    evidence_ids: tuple[str, ...]
    evaluate_time: datetime
    remediation_id: str = ""


@dataclass(frozen=True)
class StoredAssessment:
    """An assessment as stored."""

    assessment_id: str
    frameworks: tuple[Framework, ...]
    state: int
    start_time: datetime
    finish_time: datetime | None
    error: str
    started_by: str
    evidence_count: int
    scores: tuple[tuple[FrameworkScore, datetime], ...] = ()
    results: tuple[StoredResult, ...] = field(default=())


def _score_json(score: FrameworkScore) -> str:
    def one(s: Score) -> dict[str, float | int]:
        return {"score": s.score, "p": s.passing, "f": s.failing, "e": s.error, "n": s.not_assessed}

    return json.dumps({"overall": one(score.overall), "families": {k: one(v) for k, v in score.families.items()}})


def _score_from(framework: Framework, text: str) -> FrameworkScore:
    def one(d: dict[str, float]) -> Score:
        return Score(float(d["score"]), int(d["p"]), int(d["f"]), int(d["e"]), int(d["n"]))

    doc = json.loads(text)
    return FrameworkScore(framework, one(doc["overall"]), {k: one(v) for k, v in doc["families"].items()})


class AssessmentStore:
    """The assessment tables."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def start(self, tx: Transaction, assessment: StoredAssessment) -> None:
        """Record a running assessment."""
        await tx.execute(
            "INSERT INTO assessments (assessment_id, frameworks, state, start_us, started_by) VALUES (?, ?, ?, ?, ?)",
            (
                assessment.assessment_id,
                ",".join(str(int(f)) for f in assessment.frameworks),
                assessment.state,
                to_micros(assessment.start_time),
                assessment.started_by,
            ),
        )

    async def finish(
        self,
        tx: Transaction,
        assessment_id: str,
        *,
        state: int,
        finish_time: datetime,
        evidence_count: int,
        error: str = "",
        results: Sequence[StoredResult] = (),
        scores: Sequence[FrameworkScore] = (),
    ) -> None:
        """Record the outcome: results, latest results, scores, state."""
        await tx.executemany(
            "INSERT INTO control_results (assessment_id, control_id, framework, status, summary, evidence_ids,"
            " evaluate_us, remediation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.assessment_id,
                    r.control_id,
                    int(r.framework),
                    int(r.status),
                    r.summary,
                    json.dumps(list(r.evidence_ids)),
                    to_micros(r.evaluate_time),
                    r.remediation_id,
                )
                for r in results
            ],
        )
        finish_us = to_micros(finish_time)
        for r in results:
            updated = await tx.execute(
                "UPDATE latest_results SET assessment_id = ?, status = ?, finish_us = ? WHERE control_id = ?"
                " AND finish_us <= ?",
                (assessment_id, int(r.status), finish_us, r.control_id, finish_us),
            )
            if updated == 0:
                exists = await tx.fetchone("SELECT 1 FROM latest_results WHERE control_id = ?", (r.control_id,))
                if exists is None:
                    await tx.execute(
                        "INSERT INTO latest_results (control_id, assessment_id, status, finish_us) VALUES (?, ?, ?, ?)",
                        (r.control_id, assessment_id, int(r.status), finish_us),
                    )
        await tx.executemany(
            "INSERT INTO framework_scores (assessment_id, framework, score, assess_us) VALUES (?, ?, ?, ?)",
            [(assessment_id, int(s.framework), _score_json(s), finish_us) for s in scores],
        )
        await tx.execute(
            "UPDATE assessments SET state = ?, finish_us = ?, error = ?, evidence_count = ? WHERE assessment_id = ?",
            (state, finish_us, error, evidence_count, assessment_id),
        )

    async def get(self, assessment_id: str, *, with_results: bool = True) -> StoredAssessment | None:
        """One assessment with its scores (and results)."""
        row = await self.database.fetchone(
            "SELECT assessment_id, frameworks, state, start_us, finish_us, error, started_by, evidence_count"
            " FROM assessments WHERE assessment_id = ?",
            (assessment_id,),
        )
        if row is None:
            return None
        return await self._complete(row, with_results)

    async def _complete(self, row: Row, with_results: bool) -> StoredAssessment:
        assessment = _assessment(row)
        score_rows = await self.database.fetchall(
            "SELECT framework, score, assess_us FROM framework_scores WHERE assessment_id = ? ORDER BY framework",
            (assessment.assessment_id,),
        )
        scores = tuple((_score_from(Framework(int(r[0])), str(r[1])), from_micros(r[2])) for r in score_rows)
        results: tuple[StoredResult, ...] = ()
        if with_results:
            result_rows = await self.database.fetchall(
                "SELECT assessment_id, control_id, framework, status, summary, evidence_ids, evaluate_us,"
                " remediation_id FROM control_results WHERE assessment_id = ? ORDER BY control_id",
                (assessment.assessment_id,),
            )
            results = tuple(_result(r) for r in result_rows)
        return StoredAssessment(**{**assessment.__dict__, "scores": scores, "results": results})

    async def page(
        self, framework: Framework | None, after: tuple[int, str] | None, limit: int
    ) -> list[StoredAssessment]:
        """Newest first, without results; `after` is the (start_us, id) of the previous page's last."""
        clauses: list[str] = ["1 = 1"]
        params: list[object] = []
        if after is not None:
            clauses.append("(start_us < ? OR (start_us = ? AND assessment_id > ?))")
            params += [after[0], after[0], after[1]]
        rows = await self.database.fetchall(
            "SELECT assessment_id, frameworks, state, start_us, finish_us, error, started_by, evidence_count"
            f" FROM assessments WHERE {' AND '.join(clauses)} ORDER BY start_us DESC, assessment_id LIMIT ?",
            (*params, limit * 4 if framework else limit),
        )
        found = [_assessment(r) for r in rows]
        if framework is not None:
            found = [a for a in found if framework in a.frameworks][:limit]
        return [await self._complete_row(a) for a in found]

    async def _complete_row(self, assessment: StoredAssessment) -> StoredAssessment:
        row = await self.database.fetchone(
            "SELECT assessment_id, frameworks, state, start_us, finish_us, error, started_by, evidence_count"
            " FROM assessments WHERE assessment_id = ?",
            (assessment.assessment_id,),
        )
        return await self._complete(row, with_results=False)

    async def latest_succeeded(self, framework: Framework | None) -> StoredAssessment | None:
        """The newest succeeded assessment (covering `framework`, if given)."""
        rows = await self.database.fetchall(
            "SELECT assessment_id, frameworks FROM assessments WHERE state = ? ORDER BY finish_us DESC LIMIT 200",
            (AssessmentState.SUCCEEDED,),
        )
        for row in rows:
            frameworks = _frameworks(str(row[1]))
            if framework is None or framework in frameworks:
                return await self.get(str(row[0]))
        return None

    async def latest_result(self, control_id: str) -> StoredResult | None:
        """The control's newest result."""
        row = await self.database.fetchone(
            "SELECT r.assessment_id, r.control_id, r.framework, r.status, r.summary, r.evidence_ids, r.evaluate_us,"
            " r.remediation_id FROM latest_results l JOIN control_results r"
            " ON r.assessment_id = l.assessment_id AND r.control_id = l.control_id WHERE l.control_id = ?",
            (control_id,),
        )
        return None if row is None else _result(row)

    async def latest_statuses(self) -> dict[str, ControlStatus]:
        """The newest status of every assessed control."""
        rows = await self.database.fetchall("SELECT control_id, status FROM latest_results")
        return {str(r[0]): ControlStatus(int(r[1])) for r in rows}

    async def history(
        self, framework: Framework, before: int | None, limit: int
    ) -> list[tuple[str, FrameworkScore, datetime]]:
        """Scores of `framework`, newest first, before an assess time (µs) for paging."""
        clause, params = ("AND assess_us < ?", [before]) if before is not None else ("", [])
        rows = await self.database.fetchall(
            f"SELECT assessment_id, score, assess_us FROM framework_scores WHERE framework = ? {clause}"
            " ORDER BY assess_us DESC LIMIT ?",
            (int(framework), *params, limit),
        )
        return [(str(r[0]), _score_from(framework, str(r[1])), from_micros(r[2])) for r in rows]

    async def evidence_ids_of(self, assessment_id: str, control_id: str) -> tuple[str, ...] | None:
        """The evidence a control's result rests on (None: no such result)."""
        row = await self.database.fetchone(
            "SELECT evidence_ids FROM control_results WHERE assessment_id = ? AND control_id = ?",
            (assessment_id, control_id),
        )
        return None if row is None else tuple(json.loads(str(row[0])))

    async def evidence_ids_of_control(self, control_id: str) -> tuple[str, ...]:
        """Every evidence id any result of a control rests on."""
        rows = await self.database.fetchall(
            "SELECT evidence_ids FROM control_results WHERE control_id = ?", (control_id,)
        )
        return tuple(dict.fromkeys(i for r in rows for i in json.loads(str(r[0]))))


def _frameworks(text: str) -> tuple[Framework, ...]:
    return tuple(Framework(int(x)) for x in text.split(",") if x)


def _assessment(row: Row) -> StoredAssessment:
    return StoredAssessment(
        assessment_id=str(row[0]),
        frameworks=_frameworks(str(row[1])),
        state=int(row[2]),
        start_time=from_micros(row[3]),
        finish_time=maybe_datetime(row[4]),
        error=str(row[5]),
        started_by=str(row[6]),
        evidence_count=int(row[7]),
    )


def _result(row: Row) -> StoredResult:
    return StoredResult(
        assessment_id=str(row[0]),
        control_id=str(row[1]),
        framework=Framework(int(row[2])),
        status=ControlStatus(int(row[3])),
        summary=str(row[4]),
        evidence_ids=tuple(json.loads(str(row[5]))),
        evaluate_time=from_micros(row[6]),
        remediation_id=str(row[7]),
    )
