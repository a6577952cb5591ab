"""The wire form of ledger objects: protobuf messages from states, rows and events, and times from requests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from google.protobuf import duration_pb2, timestamp_pb2

from servers.credits.audit import ChainMismatch, MismatchKind
from servers.credits.events import (
    Consumed,
    Event,
    LowBalanceAlerted,
    Purchased,
    ReservationCancelled,
    ReservationCommitted,
    ReservationExpired,
    Reserved,
    StoredEvent,
    ThresholdSet,
    TransferredIn,
    TransferredOut,
)
from servers.credits.readmodels import ReservationRow, ReservationState
from servers.mesh.errors import InvalidArgument
from servers.mesh.timestamps import timestamp
from shieldx.credits.v1 import credits_pb2

# google.protobuf.Timestamp's valid range (0001-01-01 to 9999-12-31 UTC) and Duration's (±10,000 years).
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_MAX_DURATION_SECONDS = 315_576_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TRANSACTION_TYPES: dict[int, str] = {
    credits_pb2.TRANSACTION_TYPE_PURCHASED: Purchased.TYPE,
    credits_pb2.TRANSACTION_TYPE_CONSUMED: Consumed.TYPE,
    credits_pb2.TRANSACTION_TYPE_RESERVED: Reserved.TYPE,
    credits_pb2.TRANSACTION_TYPE_RESERVATION_COMMITTED: ReservationCommitted.TYPE,
    credits_pb2.TRANSACTION_TYPE_RESERVATION_CANCELLED: ReservationCancelled.TYPE,
    credits_pb2.TRANSACTION_TYPE_RESERVATION_EXPIRED: ReservationExpired.TYPE,
    credits_pb2.TRANSACTION_TYPE_TRANSFERRED_OUT: TransferredOut.TYPE,
    credits_pb2.TRANSACTION_TYPE_TRANSFERRED_IN: TransferredIn.TYPE,
    credits_pb2.TRANSACTION_TYPE_THRESHOLD_SET: ThresholdSet.TYPE,
    credits_pb2.TRANSACTION_TYPE_LOW_BALANCE_ALERTED: LowBalanceAlerted.TYPE,
}
"""Wire transaction type → stored event type."""
_WIRE_TYPES = {name: number for number, name in TRANSACTION_TYPES.items()}

RESERVATION_STATES: dict[credits_pb2.ReservationState.ValueType, ReservationState] = {
    credits_pb2.RESERVATION_STATE_OPEN: ReservationState.OPEN,
    credits_pb2.RESERVATION_STATE_EXPIRED: ReservationState.EXPIRED,
    credits_pb2.RESERVATION_STATE_COMMITTED: ReservationState.COMMITTED,
    credits_pb2.RESERVATION_STATE_CANCELLED: ReservationState.CANCELLED,
}
"""Wire reservation state → stored state."""
_WIRE_STATES = {state: number for number, state in RESERVATION_STATES.items()}

_MISMATCH_KINDS = {
    MismatchKind.HASH: credits_pb2.AUDIT_MISMATCH_KIND_HASH,
    MismatchKind.PREVIOUS_HASH: credits_pb2.AUDIT_MISMATCH_KIND_PREVIOUS_HASH,
    MismatchKind.VERSION_GAP: credits_pb2.AUDIT_MISMATCH_KIND_VERSION_GAP,
}


class BalanceView(Protocol):
    """What a balance message is made from: an `AccountState` or a read-model row."""

    @property
    def account_id(self) -> str: ...
    @property
    def available(self) -> int: ...
    @property
    def held(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def threshold(self) -> int: ...
    @property
    def updated_at(self) -> datetime | None: ...


def instant(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """The UTC datetime of a request Timestamp; InvalidArgument(field) outside Timestamp's range."""
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos <= 999_999_999:
        raise InvalidArgument(field, "is not a valid timestamp (0001-01-01 to 9999-12-31 UTC)")
    return datetime.fromtimestamp(0, UTC) + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def lifetime(duration: duration_pb2.Duration, field: str) -> timedelta:
    """The timedelta of a request Duration; InvalidArgument(field) if it is not a valid Duration."""
    seconds, nanos = duration.seconds, duration.nanos
    if not -_MAX_DURATION_SECONDS <= seconds <= _MAX_DURATION_SECONDS or not -999_999_999 <= nanos <= 999_999_999:
        raise InvalidArgument(field, "is not a valid duration")
    if (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument(field, "seconds and nanos must have the same sign")
    return timedelta(seconds=seconds, microseconds=int(nanos / 1000))


def balance(view: BalanceView) -> credits_pb2.Balance:
    """The Balance message of an account state or balance row."""
    updated_at = view.updated_at
    return credits_pb2.Balance(
        account_id=view.account_id,
        available=view.available,
        held=view.held,
        total=view.available + view.held,
        version=view.version,
        threshold=view.threshold,
        update_time=None if updated_at is None else timestamp(updated_at),
    )


def reservation_of(event: Reserved) -> credits_pb2.Reservation:
    """The Reservation message of a reservation just made (state OPEN)."""
    return credits_pb2.Reservation(
        account_id=event.account_id,
        reservation_id=event.reservation_id,
        amount=event.amount,
        state=credits_pb2.RESERVATION_STATE_OPEN,
        create_time=timestamp(event.occurred_at),
        expire_time=timestamp(event.expires_at),
        description=event.description,
    )


def reservation(row: ReservationRow) -> credits_pb2.Reservation:
    """The Reservation message of a read-model row."""
    message = credits_pb2.Reservation(
        account_id=row.account_id,
        reservation_id=row.reservation_id,
        amount=row.amount,
        state=_WIRE_STATES[row.state],
        create_time=timestamp(row.created_at),
        expire_time=timestamp(row.expires_at),
        committed_amount=row.committed,
        released_amount=row.released,
        description=row.description,
    )
    if row.closed_at is not None:
        message.close_time.CopyFrom(timestamp(row.closed_at))
    return message


def transaction(row: StoredEvent, open_reference: Callable[[str], str]) -> credits_pb2.Transaction:
    """The Transaction message of a stored event; `open_reference` decrypts payment references."""
    event = row.decode()
    message = credits_pb2.Transaction(
        account_id=row.account_id,
        version=row.version,
        type=_WIRE_TYPES[row.type],  # type: ignore[arg-type]
        occur_time=timestamp(row.occurred_at),
        trace_id=row.trace_id,
        hash=row.hash,
    )
    _fill_transaction(message, event, open_reference)
    return message


def _fill_transaction(message: credits_pb2.Transaction, event: Event, open_reference: Callable[[str], str]) -> None:
    match event:
        case Purchased():
            message.amount = event.amount
            message.reference = open_reference(event.payment_reference.ciphertext)
        case Consumed():
            message.amount = event.amount
            message.description = event.description
            message.reference = event.reference
        case Reserved():
            message.amount = event.amount
            message.reservation_id = event.reservation_id
            message.description = event.description
            message.expire_time.CopyFrom(timestamp(event.expires_at))
        case ReservationCommitted():
            message.amount = event.committed
            message.reservation_id = event.reservation_id
            message.released_amount = event.released
        case ReservationCancelled():
            message.reservation_id = event.reservation_id
            message.released_amount = event.released
        case ReservationExpired():
            message.reservation_id = event.reservation_id
            message.released_amount = event.released
            message.expire_time.CopyFrom(timestamp(event.expires_at))
        case TransferredOut() | TransferredIn():
            message.amount = event.amount
            message.transfer_id = event.transfer_id
            message.counterparty_account_id = event.counterparty_account_id
            message.description = event.description
        case ThresholdSet():
            message.threshold = event.threshold
        case LowBalanceAlerted():
            message.amount = event.available
            message.threshold = event.threshold


def alert(event: LowBalanceAlerted) -> credits_pb2.LowBalanceAlert:
    """The LowBalanceAlert message of an alert event."""
    return credits_pb2.LowBalanceAlert(
        account_id=event.account_id,
        version=event.version,
        threshold=event.threshold,
        available=event.available,
        alert_time=timestamp(event.occurred_at),
        trace_id=event.trace_id,
    )


def mismatch(found: ChainMismatch) -> credits_pb2.AuditChainMismatch:
    """The AuditChainMismatch message of a chain verification failure."""
    return credits_pb2.AuditChainMismatch(
        account_id=found.account_id,
        version=found.version,
        kind=_MISMATCH_KINDS[found.kind],
        expected_hash=found.expected_hash,
        stored_hash=found.stored_hash,
        expected_version=found.expected_version,
    )
