"""Deployments as JSON documents, for storage, and back.

The store keeps a deployment as one JSON document (plus whatever columns it indexes), so
the state machine's state survives restarts exactly. The document carries a format number;
a reader refuses formats it does not know rather than guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from servers.deployment.analysis import AnalysisOutcome, AnalysisThresholds, Verdict
from servers.deployment.plans import DeploymentPlan, PauseMode, Step, Strategy
from servers.deployment.progress import Deployment, HistoryEntry, PauseReason, State

FORMAT = 1
"""Version of the document layout written by `deployment_document`."""


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _read_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _outcome_document(outcome: AnalysisOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "verdict": outcome.verdict.value,
        "requests": outcome.requests,
        "errors": outcome.errors,
        "error_rate": outcome.error_rate,
        "p95_latency": outcome.p95_latency,
        "healthy_share": outcome.healthy_share,
        "reasons": list(outcome.reasons),
    }


def _read_outcome(document: Mapping[str, Any] | None) -> AnalysisOutcome | None:
    if document is None:
        return None
    return AnalysisOutcome(
        verdict=Verdict(document["verdict"]),
        requests=document["requests"],
        errors=document["errors"],
        error_rate=document["error_rate"],
        p95_latency=document["p95_latency"],
        healthy_share=document["healthy_share"],
        reasons=tuple(document["reasons"]),
    )


def _plan_document(plan: DeploymentPlan) -> dict[str, Any]:
    limits = plan.analysis
    return {
        "service": plan.service,
        "from_version": plan.from_version,
        "to_version": plan.to_version,
        "strategy": plan.strategy.value,
        "steps": [[step.weight_percent, step.pause] for step in plan.steps],
        "pause_mode": plan.pause_mode.value,
        "pause": plan.pause,
        "analysis": {
            "max_error_rate": limits.max_error_rate,
            "min_healthy_share": limits.min_healthy_share,
            "max_p95_latency": limits.max_p95_latency,
            "min_requests": limits.min_requests,
            "failure_limit": limits.failure_limit,
            "interval": limits.interval,
        },
        "replicas": plan.replicas,
        "keep_previous_for": plan.keep_previous_for,
    }


def _read_plan(document: Mapping[str, Any]) -> DeploymentPlan:
    return DeploymentPlan(
        service=document["service"],
        from_version=document["from_version"],
        to_version=document["to_version"],
        strategy=Strategy(document["strategy"]),
        steps=tuple(Step(weight, pause) for weight, pause in document["steps"]),
        pause_mode=PauseMode(document["pause_mode"]),
        pause=document["pause"],
        analysis=AnalysisThresholds(**document["analysis"]),
        replicas=document["replicas"],
        keep_previous_for=document["keep_previous_for"],
    )


def _entry_document(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": _time(entry.at),
        "from_state": entry.from_state.value if entry.from_state else None,
        "to_state": entry.to_state.value,
        "step": entry.step,
        "weight_percent": entry.weight_percent,
        "event": entry.event,
        "actor": entry.actor,
        "detail": entry.detail,
        "verdict": entry.verdict.value if entry.verdict else None,
    }


def _read_entry(document: Mapping[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        at=datetime.fromisoformat(document["at"]),
        from_state=State(document["from_state"]) if document["from_state"] else None,
        to_state=State(document["to_state"]),
        step=document["step"],
        weight_percent=document["weight_percent"],
        event=document["event"],
        actor=document["actor"],
        detail=document["detail"],
        verdict=Verdict(document["verdict"]) if document["verdict"] else None,
    )


def deployment_document(deployment: Deployment) -> dict[str, Any]:
    """The deployment as a JSON-serialisable document."""
    return {
        "format": FORMAT,
        "id": deployment.id,
        "plan": _plan_document(deployment.plan),
        "state": deployment.state.value,
        "created_at": _time(deployment.created_at),
        "updated_at": _time(deployment.updated_at),
        "step": deployment.step,
        "weight_percent": deployment.weight_percent,
        "pause_reason": deployment.pause_reason.value if deployment.pause_reason else None,
        "step_verdict": deployment.step_verdict.value if deployment.step_verdict else None,
        "gate_open": deployment.gate_open,
        "consecutive_failures": deployment.consecutive_failures,
        "last_analysis": _outcome_document(deployment.last_analysis),
        "ready_needed": deployment.ready_needed,
        "full_promotion": deployment.full_promotion,
        "from_replicas": deployment.from_replicas,
        "to_replicas": deployment.to_replicas,
        "timer_at": _time(deployment.timer_at),
        "timer_remaining": deployment.timer_remaining,
        "next_analysis_at": _time(deployment.next_analysis_at),
        "history": [_entry_document(entry) for entry in deployment.history],
        "revision": deployment.revision,
    }


def deployment_from_document(document: Mapping[str, Any]) -> Deployment:
    """The deployment a `deployment_document` describes; ValueError for unknown formats."""
    if document.get("format") != FORMAT:
        raise ValueError(f"deployment document format {document.get('format')!r} is not {FORMAT}")
    created_at, updated_at = _read_time(document["created_at"]), _read_time(document["updated_at"])
    if created_at is None or updated_at is None:
        raise ValueError("a deployment document needs created_at and updated_at")
    return Deployment(
        id=document["id"],
        plan=_read_plan(document["plan"]),
        state=State(document["state"]),
        created_at=created_at,
        updated_at=updated_at,
        step=document["step"],
        weight_percent=document["weight_percent"],
        pause_reason=PauseReason(document["pause_reason"]) if document["pause_reason"] else None,
        step_verdict=Verdict(document["step_verdict"]) if document["step_verdict"] else None,
        gate_open=document["gate_open"],
        consecutive_failures=document["consecutive_failures"],
        last_analysis=_read_outcome(document["last_analysis"]),
        ready_needed=document["ready_needed"],
        full_promotion=document["full_promotion"],
        from_replicas=document["from_replicas"],
        to_replicas=document["to_replicas"],
        timer_at=_read_time(document["timer_at"]),
        timer_remaining=document["timer_remaining"],
        next_analysis_at=_read_time(document["next_analysis_at"]),
        history=tuple(_read_entry(entry) for entry in document["history"]),
        revision=document["revision"],
    )
