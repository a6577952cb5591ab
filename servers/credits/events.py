"""Credits ledger events: what happened to an account, and the row form a store keeps them in.

Every change to an account is one immutable event with the account's next version. A store
keeps each as a row `(account_id, version, type, body, occurred_at, trace_id, prev_hash, hash)`
(see `StoredEvent`); `body` is canonical JSON (sorted keys, no spaces, ASCII), which
`encode_body` writes and `decode_event` reads back. The `TYPE` strings are stored in
every row and hashed into the audit chain: they must never change.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

Body = dict[str, Any]
"""An event's JSON-able body (ints and strings only, never floats)."""
JsonFields = Mapping[str, Any]
"""A decoded JSON object read back from a store."""


class CorruptEvent(ValueError):
    """A stored event or snapshot cannot be decoded: unknown type, missing or mistyped field."""


def utc_text(moment: datetime) -> str:
    """The canonical text of an instant: UTC, microseconds, `Z` suffix (as hashed and stored)."""
    last = _last_utc_text
    if moment is last[0]:
        return last[1]  # every event of a group shares the group's instant
    if moment.tzinfo is UTC:
        # The ledger clock's own instants (every event's): only the offset's spelling changes.
        text = moment.isoformat(timespec="microseconds")[:-6] + "Z"
        _remember_utc_text(moment, text)
        return text
    if moment.tzinfo is None:
        raise ValueError("naive datetime: ledger times must carry a time zone")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_last_utc_text: tuple[datetime | None, str] = (None, "")


def _remember_utc_text(moment: datetime, text: str) -> None:
    global _last_utc_text
    _last_utc_text = (moment, text)  # one tuple, so a reader never sees half of a pair


def parse_utc(text: str) -> datetime:
    """Read an instant written by `utc_text` (any ISO 8601 with an offset is accepted)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset")
    return moment


@dataclass(frozen=True, slots=True)
class SealedPaymentReference:
    """A payment reference as stored: encrypted, plus a keyed hash to find it by exact value."""

    ciphertext: str
    """`v1:<key id>:<base64 SecretBox nonce+ciphertext>` (see `payment_refs`)."""
    lookup: str
    """Hex keyed BLAKE2b of the plaintext under the same key; equal references, equal lookups."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all ledger events: the fields every stored row has besides the body."""

    TYPE: ClassVar[str] = ""

    account_id: str
    """The account whose stream this event belongs to."""
    version: int
    """Position in the account's stream: 1 for its first event, then +1 each."""
    occurred_at: datetime
    """When the event was recorded (time zone aware; never earlier than its predecessor)."""
    trace_id: str
    """W3C trace id of the call that caused it; empty if untraced."""

    def to_body(self) -> Body:
        """The type-specific fields as a JSON-able dict."""
        raise NotImplementedError

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild an event from its row fields and decoded body."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Purchased(Event):
    """Credits bought and added to the available balance."""

    TYPE: ClassVar[str] = "Purchased"

    amount: int
    payment_reference: SealedPaymentReference

    def to_body(self) -> Body:
        """The purchase's amount and sealed payment reference."""
        return {
            "amount": self.amount,
            "payment_reference": self.payment_reference.ciphertext,
            "payment_reference_lookup": self.payment_reference.lookup,
        }

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        reference = SealedPaymentReference(_text(body, "payment_reference"), _text(body, "payment_reference_lookup"))
        return cls(account_id, version, occurred_at, trace_id, _int(body, "amount"), reference)


@dataclass(frozen=True, slots=True)
class Consumed(Event):
    """Credits spent directly from the available balance."""

    TYPE: ClassVar[str] = "Consumed"

    amount: int
    description: str = ""
    reference: str = ""

    def to_body(self) -> Body:
        """The amount, with the caller's description and reference."""
        return {"amount": self.amount, "description": self.description, "reference": self.reference}

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(
            account_id,
            version,
            occurred_at,
            trace_id,
            _int(body, "amount"),
            _text(body, "description"),
            _text(body, "reference"),
        )


@dataclass(frozen=True, slots=True)
class Reserved(Event):
    """Credits moved from available to held until `expires_at` (an open reservation)."""

    TYPE: ClassVar[str] = "Reserved"

    reservation_id: str
    amount: int
    expires_at: datetime
    description: str = ""

    def to_body(self) -> Body:
        """The reservation's id, amount, expiry and description."""
        return {
            "reservation_id": self.reservation_id,
            "amount": self.amount,
            "expires_at": utc_text(self.expires_at),
            "description": self.description,
        }

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(
            account_id,
            version,
            occurred_at,
            trace_id,
            _text(body, "reservation_id"),
            _int(body, "amount"),
            parse_utc(_text(body, "expires_at")),
            _text(body, "description"),
        )


@dataclass(frozen=True, slots=True)
class ReservationCommitted(Event):
    """A reservation spent: `committed` consumed, `released` returned to available."""

    TYPE: ClassVar[str] = "ReservationCommitted"

    reservation_id: str
    committed: int
    released: int

    def to_body(self) -> Body:
        """The reservation and how its amount was split."""
        return {"reservation_id": self.reservation_id, "committed": self.committed, "released": self.released}

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(
            account_id,
            version,
            occurred_at,
            trace_id,
            _text(body, "reservation_id"),
            _int(body, "committed"),
            _int(body, "released"),
        )


@dataclass(frozen=True, slots=True)
class ReservationCancelled(Event):
    """A reservation released on request: `released` returned to available."""

    TYPE: ClassVar[str] = "ReservationCancelled"

    reservation_id: str
    released: int

    def to_body(self) -> Body:
        """The reservation and the credits released."""
        return {"reservation_id": self.reservation_id, "released": self.released}

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(account_id, version, occurred_at, trace_id, _text(body, "reservation_id"), _int(body, "released"))


@dataclass(frozen=True, slots=True)
class ReservationExpired(Event):
    """A reservation released because it passed `expires_at`; `released` returned to available."""

    TYPE: ClassVar[str] = "ReservationExpired"

    reservation_id: str
    released: int
    expires_at: datetime

    def to_body(self) -> Body:
        """The reservation, the credits released and the expiry it passed."""
        return {
            "reservation_id": self.reservation_id,
            "released": self.released,
            "expires_at": utc_text(self.expires_at),
        }

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(
            account_id,
            version,
            occurred_at,
            trace_id,
            _text(body, "reservation_id"),
            _int(body, "released"),
            parse_utc(_text(body, "expires_at")),
        )


@dataclass(frozen=True, slots=True)
class TransferSide(Event):
    """One side of a transfer: the same fields whichever way the credits go."""

    transfer_id: str
    counterparty_account_id: str
    amount: int
    description: str = ""

    def to_body(self) -> Body:
        """The transfer id, the other account, amount and description."""
        return {
            "transfer_id": self.transfer_id,
            "counterparty_account_id": self.counterparty_account_id,
            "amount": self.amount,
            "description": self.description,
        }

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(
            account_id,
            version,
            occurred_at,
            trace_id,
            _text(body, "transfer_id"),
            _text(body, "counterparty_account_id"),
            _int(body, "amount"),
            _text(body, "description"),
        )


@dataclass(frozen=True, slots=True)
class TransferredOut(TransferSide):
    """Credits sent to another account (the source side of a transfer)."""

    TYPE: ClassVar[str] = "TransferredOut"


@dataclass(frozen=True, slots=True)
class TransferredIn(TransferSide):
    """Credits received from another account (the destination side of a transfer)."""

    TYPE: ClassVar[str] = "TransferredIn"


@dataclass(frozen=True, slots=True)
class ThresholdSet(Event):
    """The low-balance threshold set (0: cleared); it re-arms the alert."""

    TYPE: ClassVar[str] = "ThresholdSet"

    threshold: int

    def to_body(self) -> Body:
        """The new threshold."""
        return {"threshold": self.threshold}

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(account_id, version, occurred_at, trace_id, _int(body, "threshold"))


@dataclass(frozen=True, slots=True)
class LowBalanceAlerted(Event):
    """The available balance crossed below the threshold; disarms the alert until it recovers."""

    TYPE: ClassVar[str] = "LowBalanceAlerted"

    threshold: int
    available: int

    def to_body(self) -> Body:
        """The threshold crossed and the available balance right after."""
        return {"threshold": self.threshold, "available": self.available}

    @classmethod
    def from_body(cls, account_id: str, version: int, occurred_at: datetime, trace_id: str, body: JsonFields) -> Self:
        """Rebuild from a stored row."""
        return cls(account_id, version, occurred_at, trace_id, _int(body, "threshold"), _int(body, "available"))


EVENT_TYPES: Mapping[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        Purchased,
        Consumed,
        Reserved,
        ReservationCommitted,
        ReservationCancelled,
        ReservationExpired,
        TransferredOut,
        TransferredIn,
        ThresholdSet,
        LowBalanceAlerted,
    )
}
"""Every event class by its stored type name."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as a store keeps it: one row of the append-only event store."""

    account_id: str
    version: int
    type: str
    """`Event.TYPE` of the event."""
    body: str
    """Canonical JSON of `Event.to_body()` (from a JSONB column, read it back as `body::text`;
    any JSON formatting decodes and verifies)."""
    occurred_at: datetime
    trace_id: str
    prev_hash: bytes
    """Hash of the account's previous event; 32 zero bytes for version 1."""
    hash: bytes
    """SHA-256 audit hash of this row (see `audit.event_hash`)."""

    def decode(self) -> Event:
        """The event this row holds."""
        return decode_event(self.account_id, self.version, self.type, self.body, self.occurred_at, self.trace_id)


def canonical_json(body: Mapping[str, Any]) -> str:
    """The one JSON text of a body: sorted keys, no whitespace, ASCII only (stored and hashed)."""
    return _CANONICAL.encode(body)


# What json.dumps would build on every call with these arguments (an encoder is stateless).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_body(event: Event) -> str:
    """The canonical JSON body of an event, as stored in its row."""
    return canonical_json(event.to_body())


def decode_event(
    account_id: str,
    version: int,
    type_name: str,
    body: str | Mapping[str, Any],
    occurred_at: datetime,
    trace_id: str,
) -> Event:
    """Rebuild an event from its row; `body` may be JSON text or already decoded (JSONB).

    Raises `CorruptEvent` naming the account and version if the row does not decode.
    """
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise CorruptEvent(f"event {account_id}@{version}: unknown type {type_name!r}")
    try:
        fields = _parse_json(body) if isinstance(body, str) else body
        if occurred_at.tzinfo is None:
            raise ValueError("occurred_at has no time zone")
        return cls.from_body(account_id, version, occurred_at, trace_id, fields)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CorruptEvent(f"event {account_id}@{version} ({type_name}): {exc}") from exc


# typeshed types the context as a scanner; the stdlib itself passes a JSONDecoder.
_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _parse_json(text: str) -> Any:
    # Stored bodies are canonical JSON, which the C scanner alone parses about twice as fast as
    # json.loads (that adds two regex passes for surrounding whitespace). Replay decodes every
    # event, so this is worth it; anything the scanner does not consume whole takes json.loads.
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


def _int(body: JsonFields, key: str) -> int:
    value = body[key]
    if type(value) is not int:
        raise TypeError(f"{key} is not an integer")
    return value


def _text(body: JsonFields, key: str) -> str:
    value = body[key]
    if type(value) is not str:
        raise TypeError(f"{key} is not a string")
    return value
