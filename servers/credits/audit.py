"""The credits audit chain: per-account SHA-256 hash chains over stored events, and signed heads.

Each event's hash covers its row fields and its predecessor's hash, so changing, removing or
reordering a stored event breaks the chain at that event. Chains are per account (genesis is
32 zero bytes), so an account's events can move between shards intact. The ledger head is a
digest over every account's latest (version, hash); the service signs `head_signing_bytes`
with Ed25519 on a schedule, so an auditor holding a published head can detect a rewritten
ledger even where the rewrite recomputed every hash after the change.

The encoding is length-prefixed fields behind a domain tag (never ambiguous: no field can
spill into the next), with the body as canonical JSON so a store may keep it as TEXT or JSONB.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from servers.credits.events import Event, StoredEvent, canonical_json, encode_body, utc_text

GENESIS_HASH = bytes(32)
"""The previous hash of every account's first event."""

_EVENT_TAG = b"shieldx.credits.event.v1"
_HEAD_TAG = b"shieldx.credits.ledger-head.v1"
_SIGNED_HEAD_TAG = b"shieldx.credits.signed-head.v1"


def event_hash(
    account_id: str,
    version: int,
    type_name: str,
    body: str | Mapping[str, Any],
    occurred_at: datetime,
    trace_id: str,
    prev_hash: bytes,
) -> bytes:
    """SHA-256 of one event's fields and its predecessor's hash (32 bytes).

    `body` may be the stored JSON text (any formatting: it is re-encoded canonically) or the
    decoded object. Text that is not JSON is hashed as is, so it can never match.
    """
    return _hash_canonical(account_id, version, type_name, _canonical_body(body), occurred_at, trace_id, prev_hash)


def seal(events: Sequence[Event], prev_hash: bytes) -> list[StoredEvent]:
    """The rows to append for `events` (one account, consecutive versions), chained from `prev_hash`.

    `prev_hash` is the hash of the account's latest stored event, or `GENESIS_HASH`.
    """
    rows: list[StoredEvent] = []
    for event in events:
        body = encode_body(event)
        hashed = _hash_canonical(
            event.account_id, event.version, event.TYPE, body, event.occurred_at, event.trace_id, prev_hash
        )
        rows.append(
            StoredEvent(
                event.account_id,
                event.version,
                event.TYPE,
                body,
                event.occurred_at,
                event.trace_id,
                prev_hash,
                hashed,
            )
        )
        prev_hash = hashed
    return rows


def rehash(row: StoredEvent) -> bytes:
    """The hash a stored row should carry, recomputed from its fields."""
    return event_hash(row.account_id, row.version, row.type, row.body, row.occurred_at, row.trace_id, row.prev_hash)


class MismatchKind(StrEnum):
    """How a stored event fails its chain."""

    HASH = "hash"
    """Its fields do not hash to its stored hash: the event was changed."""
    PREVIOUS_HASH = "previous_hash"
    """Its previous hash is not its predecessor's hash: an earlier hash was rewritten."""
    VERSION_GAP = "version_gap"
    """Its version does not follow its predecessor's: an event is missing or repeated."""


@dataclass(frozen=True, slots=True)
class ChainMismatch:
    """The first stored event of an account that does not match its chain."""

    account_id: str
    version: int
    kind: MismatchKind
    expected_hash: bytes
    """Recomputed value: the event's hash (HASH) or its predecessor's (PREVIOUS_HASH); empty for a gap."""
    stored_hash: bytes
    """Stored value: the event's hash (HASH) or its previous hash (PREVIOUS_HASH); empty for a gap."""
    expected_version: int = 0
    """For VERSION_GAP: the version that should have come here."""


@dataclass(frozen=True, slots=True)
class AccountHead:
    """The end of one account's chain."""

    account_id: str
    version: int
    hash: bytes


class ChainVerifier:
    """Checks stored events one at a time; each account's events must come in version order.

    Accounts may be interleaved (e.g. rows ordered by a global sequence). Feed it every row
    from each account's version 1; `check` returns the row's mismatch, if any.
    """

    def __init__(self) -> None:
        self._heads: dict[str, tuple[int, bytes]] = {}
        self.events_checked = 0
        """Rows checked so far (including a mismatching one)."""

    @property
    def accounts_checked(self) -> int:
        """Accounts seen so far."""
        return len(self._heads)

    def heads(self) -> list[AccountHead]:
        """The last verified (version, hash) of every account seen."""
        return [AccountHead(account, version, hashed) for account, (version, hashed) in self._heads.items()]

    def check(self, row: StoredEvent) -> ChainMismatch | None:
        """Verify one row against its account's chain so far."""
        self.events_checked += 1
        last_version, last_hash = self._heads.get(row.account_id, (0, GENESIS_HASH))
        if row.version != last_version + 1:
            return ChainMismatch(
                row.account_id, row.version, MismatchKind.VERSION_GAP, b"", b"", expected_version=last_version + 1
            )
        if row.prev_hash != last_hash:
            return ChainMismatch(row.account_id, row.version, MismatchKind.PREVIOUS_HASH, last_hash, row.prev_hash)
        # A body kept as TEXT is stored canonical, so hashing it as is settles most rows without
        # parsing; a match proves it is the canonical text that was sealed. Anything else (JSONB
        # formatting, or a change) is re-encoded canonically, which is the verdict.
        as_stored = _hash_canonical(
            row.account_id, row.version, row.type, row.body, row.occurred_at, row.trace_id, row.prev_hash
        )
        if as_stored == row.hash:
            self._heads[row.account_id] = (row.version, row.hash)
            return None
        recomputed = rehash(row)
        if recomputed != row.hash:
            return ChainMismatch(row.account_id, row.version, MismatchKind.HASH, recomputed, row.hash)
        self._heads[row.account_id] = (row.version, row.hash)
        return None


def verify_chain(rows: Iterable[StoredEvent]) -> ChainMismatch | None:
    """The first row that breaks its account's chain, or None if every row matches."""
    verifier = ChainVerifier()
    for row in rows:
        mismatch = verifier.check(row)
        if mismatch is not None:
            return mismatch
    return None


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """A digest over every account's chain head, ready to sign."""

    digest: bytes
    """SHA-256 over the (account id, version, hash) of every account, sorted by account id."""
    account_count: int
    event_count: int
    """Sum of the accounts' versions: every event the digest covers."""
    taken_at: datetime


def ledger_head(heads: Iterable[AccountHead], taken_at: datetime) -> LedgerHead:
    """Digest the chain heads of a set of accounts (any order; sorted here by code point)."""
    ordered = sorted(heads, key=lambda head: head.account_id)
    digest = hashlib.sha256(_HEAD_TAG)
    digest.update(len(ordered).to_bytes(8, "big"))
    events = 0
    for head in ordered:
        digest.update(_field(head.account_id.encode()))
        digest.update(head.version.to_bytes(8, "big"))
        digest.update(_field(head.hash))
        events += head.version
    return LedgerHead(digest.digest(), len(ordered), events, taken_at)


def head_signing_bytes(head: LedgerHead) -> bytes:
    """The exact bytes to sign (and to verify) for a ledger head with Ed25519."""
    return b"".join(
        (
            _SIGNED_HEAD_TAG,
            _field(head.digest),
            head.account_count.to_bytes(8, "big"),
            head.event_count.to_bytes(8, "big"),
            _field(utc_text(head.taken_at).encode()),
        )
    )


def _hash_canonical(
    account_id: str,
    version: int,
    type_name: str,
    canonical_body: str,
    occurred_at: datetime,
    trace_id: str,
    prev_hash: bytes,
) -> bytes:
    encoded = b"".join(
        (
            _EVENT_TAG,
            _field(account_id.encode()),
            version.to_bytes(8, "big", signed=False),
            _field(type_name.encode()),
            _field(canonical_body.encode()),
            _field(utc_text(occurred_at).encode()),
            _field(trace_id.encode()),
            _field(prev_hash),
        )
    )
    return hashlib.sha256(encoded).digest()


def _canonical_body(body: str | Mapping[str, Any]) -> str:
    if not isinstance(body, str):
        return canonical_json(body)
    try:
        return canonical_json(json.loads(body))
    except (ValueError, RecursionError):
        # Not JSON (or absurdly nested): hash the raw text, which no canonical body equals.
        return body


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data
