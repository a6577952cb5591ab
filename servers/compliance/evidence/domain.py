"""Evidence records, their canonical-JSON SHA-256, the chain that links them, and its verification.

A record's `sha256` covers what was observed (kind, target, passed, details, collect time) as
the contract defines it; its `chain_sha256` covers its sequence, id, `sha256` and the previous
record's `chain_sha256`, so changing, removing or reordering any record breaks every link after
it. The chain head (the last `chain_sha256`) is signed at the end of each assessment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from servers.compliance.domain import EvidenceKind

GENESIS = "0" * 64
"""`previous_chain_sha256` of the first record ever collected."""


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 text: the form every digest here is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def rfc3339(moment: datetime) -> str:
    """UTC with microseconds and `Z`, e.g. `2026-12-07T21:00:00.000000Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Observation:
    """What one probe saw, before it joins the chain."""

    kind: EvidenceKind
    target: str
    """What was probed, e.g. `shieldx.credits.v1.CreditsService@127.0.0.1:5004`."""
    passed: bool
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    """JSON-native observations, never secrets; `error` set when the probe could not observe."""
    collect_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    probe_duration: timedelta = timedelta(0)

    @property
    def error(self) -> str:
        """Why the probe could not observe its target; empty when it did."""
        return str(self.details.get("error", ""))


def observation_digest(kind: EvidenceKind, target: str, passed: bool, details: Mapping[str, Any], when: str) -> str:
    """The contract's `Evidence.sha256`: canonical JSON of kind, target, passed, details and collect time."""
    body = {"kind": f"EVIDENCE_KIND_{kind.name}", "target": target, "passed": passed, "details": details}
    body["collect_time"] = when
    return sha256_hex(canonical_json(body))


def link_digest(sequence: int, evidence_id: str, sha256: str, previous: str) -> str:
    """The contract's `Evidence.chain_sha256`."""
    return sha256_hex(
        canonical_json(
            {"sequence": sequence, "evidence_id": evidence_id, "sha256": sha256, "previous_chain_sha256": previous}
        )
    )


@dataclass(frozen=True)
class EvidenceRecord:
    """A piece of evidence as stored: an observation in its place in the chain."""

    evidence_id: str
    assessment_id: str
    observation: Observation
    sequence: int
    sha256: str
    previous_chain_sha256: str
    chain_sha256: str

    @property
    def kind(self) -> EvidenceKind:
        """What it is about."""
        return self.observation.kind


def chain(
    observations: Iterable[tuple[str, Observation]], assessment_id: str, after_sequence: int, after_chain: str
) -> list[EvidenceRecord]:
    """Link `(evidence_id, observation)` pairs onto the chain that ends at `after_sequence` / `after_chain`."""
    records: list[EvidenceRecord] = []
    sequence, previous = after_sequence, after_chain
    for evidence_id, seen in observations:
        sequence += 1
        digest = observation_digest(seen.kind, seen.target, seen.passed, seen.details, rfc3339(seen.collect_time))
        link = link_digest(sequence, evidence_id, digest, previous)
        records.append(EvidenceRecord(evidence_id, assessment_id, seen, sequence, digest, previous, link))
        previous = link
    return records


@dataclass(frozen=True)
class StoredLink:
    """A stored record as verification reads it: the fields the digests cover, as stored."""

    sequence: int
    evidence_id: str
    kind: EvidenceKind
    target: str
    passed: bool
    details: Mapping[str, Any]
    collect_time: str
    """RFC 3339 as hashed."""
    sha256: str
    previous_chain_sha256: str
    chain_sha256: str


@dataclass(frozen=True)
class ChainProblem:
    """The first record that does not match, and how."""

    sequence: int
    evidence_id: str
    problem: str


def first_mismatch(links: Iterable[StoredLink], anchor_sequence: int, anchor_chain: str) -> ChainProblem | None:
    """Walk the chain from its anchor (genesis or the last purge) and name the first record that fails."""
    expected_sequence, previous = anchor_sequence, anchor_chain
    for link in links:
        expected_sequence += 1
        if link.sequence != expected_sequence:
            return ChainProblem(link.sequence, link.evidence_id, f"sequence {expected_sequence} is missing")
        digest = observation_digest(link.kind, link.target, link.passed, link.details, link.collect_time)
        if digest != link.sha256:
            return ChainProblem(link.sequence, link.evidence_id, "its content does not match its sha256")
        if link.previous_chain_sha256 != previous:
            return ChainProblem(link.sequence, link.evidence_id, "it does not link to the record before it")
        if link_digest(link.sequence, link.evidence_id, link.sha256, previous) != link.chain_sha256:
            return ChainProblem(link.sequence, link.evidence_id, "its chain_sha256 does not match")
        previous = link.chain_sha256
    return None
