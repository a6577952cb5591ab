"""Remediation rules: one open task per failing control, due by severity, resolved by a passing assessment.

A task is active while OPEN, IN_PROGRESS or RISK_ACCEPTED (an accepted risk keeps the control
failing and opens nothing new). A later passing assessment resolves an active task with an
automatic note. A task resolved by hand is reopened by the next assessment that still finds
the control failing.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum

from servers.compliance.catalog.domain import Control
from servers.compliance.domain import ControlStatus, Severity
from servers.mesh.errors import InvalidArgument

SYSTEM_AUTHOR = "shieldx-compliance"
"""Author of the service's own notes."""

DEFAULT_DUE = {
    Severity.CRITICAL: timedelta(days=1),
    Severity.HIGH: timedelta(days=7),
    Severity.MEDIUM: timedelta(days=30),
    Severity.LOW: timedelta(days=90),
}


class RemediationState(IntEnum):
    """The contract's RemediationState."""

    OPEN = 1
    IN_PROGRESS = 2
    RESOLVED = 3
    RISK_ACCEPTED = 4


ACTIVE = frozenset({RemediationState.OPEN, RemediationState.IN_PROGRESS, RemediationState.RISK_ACCEPTED})


@dataclass(frozen=True)
class Note:
    """A note on a task."""

    author: str
    text: str
    create_time: datetime


@dataclass(frozen=True)
class Remediation:
    """A task to fix a failing control."""

    remediation_id: str
    control_id: str
    framework: int
    state: RemediationState
    title: str
    detail: str
    opened_by_assessment_id: str
    last_assessment_id: str
    severity: Severity
    create_time: datetime
    update_time: datetime
    due_time: datetime | None = None
    resolve_time: datetime | None = None
    assignee: str = ""
    notes: tuple[Note, ...] = ()
    version: int = 1

    def overdue(self, now: datetime) -> bool:
        """Past its due time and still to be worked on."""
        return (
            self.state in (RemediationState.OPEN, RemediationState.IN_PROGRESS)
            and self.due_time is not None
            and self.due_time < now
        )

    @property
    def resolved_by_hand(self) -> bool:
        """Resolved by a person rather than by a passing assessment."""
        return self.state is RemediationState.RESOLVED and bool(self.notes) and self.notes[-1].author != SYSTEM_AUTHOR


@dataclass(frozen=True)
class DuePolicy:
    """Time to fix by severity."""

    due: Mapping[Severity, timedelta] = field(default_factory=lambda: dict(DEFAULT_DUE))


def open_task(control: Control, summary: str, assessment_id: str, policy: DuePolicy, now: datetime) -> Remediation:
    """A new task for a control found failing."""
    return Remediation(
        remediation_id=f"rem_{secrets.token_hex(8)}",
        control_id=control.control_id,
        framework=int(control.framework),
        state=RemediationState.OPEN,
        title=control.title,
        detail=summary[:2000],
        opened_by_assessment_id=assessment_id,
        last_assessment_id=assessment_id,
        severity=control.severity,
        create_time=now,
        update_time=now,
        due_time=now + policy.due[control.severity],
        notes=(Note(SYSTEM_AUTHOR, f"Opened: {control.remediation}", now),),
    )


@dataclass(frozen=True)
class Plan:
    """What an assessment does to a control's tasks."""

    write: Remediation | None
    """The task to insert or update (None: nothing changes)."""
    created: bool = False


def plan(
    control: Control,
    status: ControlStatus,
    summary: str,
    latest: Remediation | None,
    assessment_id: str,
    policy: DuePolicy,
    now: datetime,
) -> Plan:
    """The change to the control's latest task after it was evaluated `status`."""
    if status is ControlStatus.FAILING:
        if latest is not None and latest.state in ACTIVE:
            return Plan(replace(latest, last_assessment_id=assessment_id, detail=summary[:2000], update_time=now))
        if latest is not None and latest.resolved_by_hand:
            note = Note(SYSTEM_AUTHOR, f"Reopened: assessment {assessment_id} finds the control still failing.", now)
            return Plan(
                replace(
                    latest,
                    state=RemediationState.OPEN,
                    last_assessment_id=assessment_id,
                    detail=summary[:2000],
                    resolve_time=None,
                    update_time=now,
                    notes=(*latest.notes, note),
                )
            )
        return Plan(open_task(control, summary, assessment_id, policy, now), created=True)
    if status is ControlStatus.PASSING and latest is not None and latest.state in ACTIVE:
        note = Note(
            SYSTEM_AUTHOR, f"Resolved automatically: assessment {assessment_id} finds the control passing.", now
        )
        return Plan(
            replace(
                latest,
                state=RemediationState.RESOLVED,
                last_assessment_id=assessment_id,
                resolve_time=now,
                update_time=now,
                notes=(*latest.notes, note),
            )
        )
    return Plan(None)


@dataclass(frozen=True)
class Change:
    """A person's change to a task (None: leave as is)."""

    state: RemediationState | None = None
    assignee: str | None = None
    due_time: datetime | None = None
    note: str = ""


def apply_change(task: Remediation, change: Change, author: str, now: datetime) -> Remediation:
    """The task after a person's change; InvalidArgument naming the field that is not allowed."""
    if len(change.note) > 2000:
        raise InvalidArgument("note", "must be at most 2,000 characters")
    if change.assignee is not None and len(change.assignee) > 200:
        raise InvalidArgument("assignee", "must be at most 200 characters")
    needs_note = change.state in (RemediationState.RESOLVED, RemediationState.RISK_ACCEPTED)
    if needs_note and not change.note.strip():
        raise InvalidArgument("note", f"is required to set {change.state.name if change.state else ''}")
    updated = task
    if change.state is not None and change.state is not task.state:
        resolved = now if change.state is RemediationState.RESOLVED else None
        updated = replace(updated, state=change.state, resolve_time=resolved)
    if change.assignee is not None:
        updated = replace(updated, assignee=change.assignee)
    if change.due_time is not None:
        updated = replace(updated, due_time=change.due_time)
    if change.note:
        updated = replace(updated, notes=(*updated.notes, Note(author or "anonymous", change.note, now)))
    return replace(updated, update_time=now)
