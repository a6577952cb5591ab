"""The compliance service's shared vocabulary: frameworks, severities, statuses and evidence kinds.

The values equal the contract's enum numbers, so converting is a cast; no grpc, no SQL here.
"""

from __future__ import annotations

from enum import IntEnum


class Framework(IntEnum):
    """A compliance framework."""

    SOC2 = 1
    ISO27001 = 2
    GDPR = 3
    PCI_DSS = 4


class Severity(IntEnum):
    """How severe a failing control or an alert is."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def weight(self) -> int:
        """Score weight (the contract: LOW 1, MEDIUM 2, HIGH 3, CRITICAL 4)."""
        return int(self)


class ControlStatus(IntEnum):
    """The outcome of evaluating one control."""

    PASSING = 1
    FAILING = 2
    ERROR = 3
    NOT_ASSESSED = 4


class EvidenceKind(IntEnum):
    """What a piece of evidence is about."""

    HEALTH = 1
    TLS = 2
    AUTH_ENFORCED = 3
    AUDIT_CHAIN = 4
    SIGNING_KEY_AGE = 5
    RETENTION = 6
    REPLICATION = 7
    ALERT_RESPONSE = 8
    MFA = 9
    POSTURE = 10
    CHANGE_MANAGEMENT = 11
    BREACH_NOTIFICATION = 12
