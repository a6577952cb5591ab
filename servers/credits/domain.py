"""Credits ledger rules: the decisions that turn a command and an account's state into events.

A decision takes a command, the account's current state and the time, and returns the events
to append (or raises a typed error); it never mutates the state and never reads a clock. Before
any command, reservations past their expiry are released (`expire_reservations`, which a
sweeper also runs on its own), and a command that takes the available balance below the
account's threshold is followed by a low-balance alert event. The service appends a
decision's events with optimistic concurrency on the account's version and applies them to
its cached state once the store has accepted them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from servers.credits.account import AccountState, ReservationOutcome
from servers.credits.commands import (
    DEFAULT_LIMITS,
    AccountCommand,
    CancelReservation,
    CommitReservation,
    Consume,
    LedgerLimits,
    Purchase,
    Reserve,
    SetThreshold,
    Transfer,
    validate_command,
    validate_transfer,
)
from servers.credits.events import (
    Consumed,
    Event,
    LowBalanceAlerted,
    Purchased,
    ReservationCancelled,
    ReservationCommitted,
    ReservationExpired,
    Reserved,
    ThresholdSet,
    TransferredIn,
    TransferredOut,
)
from servers.mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    QuotaExceeded,
)

INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
"""Reason: the available balance is smaller than the amount (metadata `available`)."""
BALANCE_LIMIT_EXCEEDED = "BALANCE_LIMIT_EXCEEDED"
"""Reason: the account's total would pass `LedgerLimits.max_balance`."""
ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
"""Reason: the account has no events (accounts are created by their first purchase)."""
RESERVATION_NOT_FOUND = "RESERVATION_NOT_FOUND"
"""Reason: the account never had a reservation with this id."""
RESERVATION_EXPIRED = "RESERVATION_EXPIRED"
"""Reason: the reservation passed its expiry; its credits were released."""
RESERVATION_ALREADY_COMMITTED = "RESERVATION_ALREADY_COMMITTED"
"""Reason: the reservation was committed already."""
RESERVATION_CANCELLED = "RESERVATION_CANCELLED"
"""Reason: the reservation was cancelled already."""
RESERVATION_EXISTS = "RESERVATION_EXISTS"
"""Reason: the account already has a reservation with this id."""
TOO_MANY_OPEN_RESERVATIONS = "TOO_MANY_OPEN_RESERVATIONS"
"""Reason: the account holds `LedgerLimits.max_open_reservations` open reservations."""

_E = TypeVar("_E", bound=Event)


@dataclass(frozen=True, slots=True)
class Decision:
    """The events one command produces on one account, in the order to append them."""

    events: tuple[Event, ...]
    """Releases of expired reservations, then `primary`, then a low-balance alert if it fired."""
    primary: Event
    """The command's own event; its version is the `event_version` of the response."""

    @property
    def alert_fired(self) -> bool:
        """True if the command took the available balance below the threshold."""
        return isinstance(self.events[-1], LowBalanceAlerted)


@dataclass(frozen=True, slots=True)
class TransferDecision:
    """The two sides of a transfer: events for the source and for the destination account."""

    outgoing: Decision
    incoming: Decision


def decide(
    state: AccountState,
    command: AccountCommand,
    *,
    now: datetime,
    trace_id: str = "",
    limits: LedgerLimits = DEFAULT_LIMITS,
) -> Decision:
    """The events `command` produces on the account in `state` at `now`, or a typed error.

    Errors: `InvalidArgument` naming the request field; `NotFound` with ACCOUNT_NOT_FOUND or
    RESERVATION_NOT_FOUND; `FailedPrecondition` with INSUFFICIENT_CREDITS,
    BALANCE_LIMIT_EXCEEDED, RESERVATION_EXPIRED, RESERVATION_ALREADY_COMMITTED or
    RESERVATION_CANCELLED; `AlreadyExists` (RESERVATION_EXISTS); `QuotaExceeded`
    (TOO_MANY_OPEN_RESERVATIONS). Reservations due at `now` are released first (their events
    lead the decision), so a command sees the balance they free; a refusal records nothing.
    """
    _require_time(now)
    if command.account_id != state.account_id:
        raise ValueError(f"command for {command.account_id!r} decided on {state.account_id!r}")
    validate_command(command, now, limits)
    stream = _Stream(state, now, trace_id)
    current = stream.expire_reservations()
    if not current.exists and not isinstance(command, Purchase):
        raise account_not_found(state.account_id)
    match command:
        case Purchase():
            primary = _purchase(stream, current, command, limits)
        case Consume():
            primary = _consume(stream, current, command)
        case Reserve():
            primary = _reserve(stream, current, command, now, limits)
        case CommitReservation():
            primary = _commit(stream, current, command)
        case CancelReservation():
            primary = _cancel(stream, current, command)
        case SetThreshold():
            primary = _set_threshold(stream, current, command)
    return Decision(tuple(stream.events), primary)


def decide_transfer(
    source: AccountState,
    destination: AccountState,
    command: Transfer,
    *,
    now: datetime,
    trace_id: str = "",
    limits: LedgerLimits = DEFAULT_LIMITS,
) -> TransferDecision:
    """Both sides of a transfer, or a typed error (as `decide`); both accounts must exist.

    The two decisions are appended to their accounts atomically by the service (one
    transaction, or two-phase commit when the accounts live on different shards).
    """
    _require_time(now)
    if (command.from_account_id, command.to_account_id) != (source.account_id, destination.account_id):
        raise ValueError("transfer decided on the wrong accounts")
    validate_transfer(command, limits)
    out_stream = _Stream(source, now, trace_id)
    in_stream = _Stream(destination, now, trace_id)
    sender = out_stream.expire_reservations()
    receiver = in_stream.expire_reservations()
    for account in (sender, receiver):
        if not account.exists:
            raise account_not_found(account.account_id)
    _require_available(sender, command.amount)
    _require_room(receiver, command.amount, limits)
    sent = out_stream.record(
        TransferredOut,
        transfer_id=command.transfer_id,
        counterparty_account_id=receiver.account_id,
        amount=command.amount,
        description=command.description,
    )
    out_stream.alert_if_crossed(sender, sender.available - command.amount)
    received = in_stream.record(
        TransferredIn,
        transfer_id=command.transfer_id,
        counterparty_account_id=sender.account_id,
        amount=command.amount,
        description=command.description,
    )
    return TransferDecision(Decision(tuple(out_stream.events), sent), Decision(tuple(in_stream.events), received))


def expire_reservations(state: AccountState, *, now: datetime, trace_id: str = "") -> list[Event]:
    """Release events for every open reservation whose expiry is at or before `now`.

    `decide` and `decide_transfer` run this first themselves; the sweeper runs it on every
    account with open reservations, so expiries are recorded on idle accounts too (and after
    a refused command, which records nothing).
    """
    _require_time(now)
    stream = _Stream(state, now, trace_id)
    stream.expire_reservations()
    return stream.events


def insufficient_credits(state: AccountState, requested: int) -> FailedPrecondition:
    """The INSUFFICIENT_CREDITS refusal, carrying the available balance in metadata."""
    return FailedPrecondition(
        f"account {state.account_id!r} has {state.available} credits available; {requested} requested",
        reason=INSUFFICIENT_CREDITS,
        metadata={
            "account_id": state.account_id,
            "available": str(state.available),
            "requested": str(requested),
        },
        violations=(
            PreconditionViolation(
                "BALANCE",
                f"accounts/{state.account_id}",
                f"{requested} credits requested, {state.available} available",
            ),
        ),
    )


def account_not_found(account_id: str) -> NotFound:
    """The ACCOUNT_NOT_FOUND refusal (also for GetBalance and friends in the service)."""
    return NotFound("account", account_id, reason=ACCOUNT_NOT_FOUND)


class _Stream:
    """The new events of one account during one decision: next versions, time and trace id."""

    def __init__(self, state: AccountState, now: datetime, trace_id: str) -> None:
        self.state = state
        self.events: list[Event] = []
        # Event times never go backwards within an account, even if this server's clock is
        # behind the one that wrote the last event; as-of-time replays rely on that order.
        self.occurred_at = now if state.updated_at is None else max(now, state.updated_at)
        self.now = now
        self.trace_id = trace_id

    def record(self, kind: type[_E], **fields: object) -> _E:
        event = kind(
            self.state.account_id,
            self.state.version + len(self.events) + 1,
            self.occurred_at,
            self.trace_id,
            **fields,
        )
        self.events.append(event)
        return event

    def expire_reservations(self) -> AccountState:
        """Record releases of expired reservations; the state with them applied."""
        due = [r for r in self.state.open_reservations.values() if r.expires_at <= self.now]
        if not due:
            return self.state
        current = self.state.copy()
        for reservation in sorted(due, key=lambda r: r.version):
            current.apply(
                self.record(
                    ReservationExpired,
                    reservation_id=reservation.reservation_id,
                    released=reservation.amount,
                    expires_at=reservation.expires_at,
                )
            )
        return current

    def alert_if_crossed(self, current: AccountState, available_after: int) -> None:
        """Record a low-balance alert if the balance crosses below an armed threshold."""
        if current.threshold > 0 and current.alert_armed and available_after < current.threshold:
            self.record(LowBalanceAlerted, threshold=current.threshold, available=available_after)


def _purchase(stream: _Stream, current: AccountState, command: Purchase, limits: LedgerLimits) -> Event:
    _require_room(current, command.amount, limits)
    return stream.record(Purchased, amount=command.amount, payment_reference=command.payment_reference)


def _consume(stream: _Stream, current: AccountState, command: Consume) -> Event:
    _require_available(current, command.amount)
    primary = stream.record(
        Consumed, amount=command.amount, description=command.description, reference=command.reference
    )
    stream.alert_if_crossed(current, current.available - command.amount)
    return primary


def _reserve(stream: _Stream, current: AccountState, command: Reserve, now: datetime, limits: LedgerLimits) -> Event:
    reservation_id = command.reservation_id
    if reservation_id in current.open_reservations or reservation_id in current.closed_reservations:
        raise AlreadyExists("reservation", reservation_id, reason=RESERVATION_EXISTS)
    if len(current.open_reservations) >= limits.max_open_reservations:
        raise QuotaExceeded(
            f"accounts/{current.account_id}",
            f"at most {limits.max_open_reservations} open reservations per account",
            reason=TOO_MANY_OPEN_RESERVATIONS,
        )
    _require_available(current, command.amount)
    if command.expire_time is not None:
        expires_at = command.expire_time
    else:
        expires_at = now + (command.ttl if command.ttl is not None else limits.default_reservation_ttl)
    primary = stream.record(
        Reserved,
        reservation_id=reservation_id,
        amount=command.amount,
        expires_at=expires_at,
        description=command.description,
    )
    stream.alert_if_crossed(current, current.available - command.amount)
    return primary


def _commit(stream: _Stream, current: AccountState, command: CommitReservation) -> Event:
    reservation = _open_reservation(current, command.reservation_id)
    committed = reservation.amount if command.amount is None else command.amount
    if committed > reservation.amount:
        raise InvalidArgument("amount", f"exceeds the {reservation.amount} credits reserved")
    return stream.record(
        ReservationCommitted,
        reservation_id=reservation.reservation_id,
        committed=committed,
        released=reservation.amount - committed,
    )


def _cancel(stream: _Stream, current: AccountState, command: CancelReservation) -> Event:
    reservation = _open_reservation(current, command.reservation_id)
    return stream.record(ReservationCancelled, reservation_id=reservation.reservation_id, released=reservation.amount)


def _set_threshold(stream: _Stream, current: AccountState, command: SetThreshold) -> Event:
    primary = stream.record(ThresholdSet, threshold=command.threshold)
    # A new threshold re-arms the alert, so one the balance is already under fires now.
    if command.threshold > 0 and current.available < command.threshold:
        stream.record(LowBalanceAlerted, threshold=command.threshold, available=current.available)
    return primary


def _open_reservation(current: AccountState, reservation_id: str) -> Reserved:
    reservation = current.open_reservations.get(reservation_id)
    if reservation is not None:
        return reservation
    outcome = current.closed_reservations.get(reservation_id)
    if outcome is None:
        raise NotFound("reservation", reservation_id, reason=RESERVATION_NOT_FOUND)
    reason, what = {
        ReservationOutcome.EXPIRED: (RESERVATION_EXPIRED, "expired"),
        ReservationOutcome.COMMITTED: (RESERVATION_ALREADY_COMMITTED, "was committed already"),
        ReservationOutcome.CANCELLED: (RESERVATION_CANCELLED, "was cancelled"),
    }[outcome]
    raise FailedPrecondition(
        f"reservation {reservation_id!r} {what}",
        reason=reason,
        metadata={"account_id": current.account_id, "reservation_id": reservation_id},
        violations=(
            PreconditionViolation(
                "RESERVATION_STATE",
                f"accounts/{current.account_id}/reservations/{reservation_id}",
                f"the reservation {what}",
            ),
        ),
    )


def _require_available(current: AccountState, amount: int) -> None:
    if amount > current.available:
        raise insufficient_credits(current, amount)


def _require_room(current: AccountState, amount: int, limits: LedgerLimits) -> None:
    if current.total + amount > limits.max_balance:
        raise FailedPrecondition(
            f"account {current.account_id!r} would own more than {limits.max_balance} credits",
            reason=BALANCE_LIMIT_EXCEEDED,
            metadata={"account_id": current.account_id, "total": str(current.total)},
            violations=(
                PreconditionViolation(
                    "BALANCE_LIMIT",
                    f"accounts/{current.account_id}",
                    f"total {current.total} + {amount} exceeds {limits.max_balance}",
                ),
            ),
        )


def _require_time(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be time zone aware")
