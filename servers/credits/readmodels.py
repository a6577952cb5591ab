"""The rows of the credits read models and how events make them: a balance row per account,
a reservation row per reservation. `projection.Projection` stores them; the live path and the
rebuild both derive them with these functions, so both give identical tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from servers.credits.account import AccountState
from servers.credits.events import (
    Event,
    ReservationCancelled,
    ReservationCommitted,
    ReservationExpired,
    Reserved,
)


class ReservationState(StrEnum):
    """A reservation's stored state (an open one past its expiry is reported as expired)."""

    OPEN = "open"
    COMMITTED = "committed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class BalanceRow:
    """One account's row of the balances read model."""

    account_id: str
    available: int
    held: int
    version: int
    threshold: int
    alert_armed: bool
    purchased: int
    consumed: int
    transferred_in: int
    transferred_out: int
    open_reservations: int
    next_expiry: datetime | None
    """Earliest expiry among the open reservations (the sweeper's index)."""
    updated_at: datetime
    position: int
    """Position of the account's latest event."""

    def releasing(self, count: int, amount: int) -> BalanceRow:
        """The row as it will be once `count` expired reservations holding `amount` are released."""
        if not count:
            return self
        return replace(
            self,
            available=self.available + amount,
            held=self.held - amount,
            open_reservations=self.open_reservations - count,
        )


@dataclass(frozen=True, slots=True)
class ReservationRow:
    """One reservation as ListReservations reports it."""

    account_id: str
    reservation_id: str
    amount: int
    state: ReservationState
    description: str
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    committed: int
    released: int
    position: int
    """Position of the event that made it (the list order)."""

    def as_of(self, now: datetime) -> ReservationRow:
        """The row as seen at `now`: open past its expiry means expired, releasing everything."""
        if self.state is ReservationState.OPEN and self.expires_at <= now:
            return replace(self, state=ReservationState.EXPIRED, closed_at=self.expires_at, released=self.amount)
        return self

    def closed_by(self, change: ReservationClosed) -> ReservationRow:
        """The row after the event that closed the reservation."""
        return ReservationRow(
            self.account_id,
            self.reservation_id,
            self.amount,
            change.state,
            self.description,
            self.created_at,
            self.expires_at,
            change.closed_at,
            change.committed,
            change.released,
            self.position,
        )


@dataclass(frozen=True, slots=True)
class ReservationClosed:
    """An event closing a reservation: its new state and how its amount was split."""

    account_id: str
    reservation_id: str
    state: ReservationState
    closed_at: datetime
    committed: int
    released: int


def balance_row(state: AccountState, position: int) -> BalanceRow:
    """The read-model row of an account in `state`, whose latest event is at `position`."""
    if state.updated_at is None:
        raise ValueError(f"account {state.account_id!r} has no events to project")
    open_reservations = state.open_reservations
    return BalanceRow(
        state.account_id,
        state.available,
        state.held,
        state.version,
        state.threshold,
        state.alert_armed,
        state.purchased,
        state.consumed,
        state.transferred_in,
        state.transferred_out,
        len(open_reservations),
        min(r.expires_at for r in open_reservations.values()) if open_reservations else None,
        state.updated_at,
        position,
    )


def reservation_change(event: Event, position: int) -> ReservationRow | ReservationClosed | None:
    """How an event changes the reservations read model (None: it does not)."""
    match event:
        case Reserved():
            return ReservationRow(
                event.account_id,
                event.reservation_id,
                event.amount,
                ReservationState.OPEN,
                event.description,
                event.occurred_at,
                event.expires_at,
                None,
                0,
                0,
                position,
            )
        case ReservationCommitted():
            return ReservationClosed(
                event.account_id,
                event.reservation_id,
                ReservationState.COMMITTED,
                event.occurred_at,
                event.committed,
                event.released,
            )
        case ReservationCancelled():
            return ReservationClosed(
                event.account_id, event.reservation_id, ReservationState.CANCELLED, event.occurred_at, 0, event.released
            )
        case ReservationExpired():
            return ReservationClosed(
                event.account_id, event.reservation_id, ReservationState.EXPIRED, event.occurred_at, 0, event.released
            )
    return None


_RESERVATION_EVENTS = frozenset({Reserved, ReservationCommitted, ReservationCancelled, ReservationExpired})
"""The event types `reservation_change` answers for."""


def reservation_changes(
    changes: Sequence[tuple[AccountState, Sequence[Event], Sequence[int]]],
) -> tuple[list[ReservationRow], list[ReservationClosed]]:
    """The reservations opened by `changes` (as they stand after them) and the closings of older ones."""
    opened: dict[tuple[str, str], ReservationRow] = {}
    closed: list[ReservationClosed] = []
    for _, events, positions in changes:
        for event, position in zip(events, positions, strict=True):
            if type(event) not in _RESERVATION_EVENTS:
                continue  # most events (consumes, purchases) leave reservations alone
            change = reservation_change(event, position)
            if isinstance(change, ReservationRow):
                opened[(change.account_id, change.reservation_id)] = change
            elif isinstance(change, ReservationClosed):
                key = (change.account_id, change.reservation_id)
                row = opened.get(key)
                if row is None:
                    closed.append(change)
                else:
                    opened[key] = row.closed_by(change)
    return list(opened.values()), closed
