"""The state of one credits account, folded from its events; snapshots of it; replay.

`AccountState.apply` is the hot path of every replay (a full rebuild, a balance as of a past
version, loading an account after its last snapshot), so it mutates the state in place and
returns it instead of building a new state per event: with reservations kept in dicts, an
immutable state would have to copy them on every event. Decisions (`domain.py`) never mutate
the state they are given; callers apply events only once the store has accepted them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from servers.credits.events import (
    Consumed,
    CorruptEvent,
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
    parse_utc,
    utc_text,
)

_T = TypeVar("_T")

SNAPSHOT_FORMAT = 1
"""Version of the snapshot dict layout; `from_snapshot` refuses others."""


class ReservationOutcome(StrEnum):
    """How a reservation closed."""

    COMMITTED = "committed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class EventOutOfOrder(CorruptEvent):
    """An event was applied to the wrong account or out of version order (a gap or a repeat)."""


class AccountState:
    """Balances, reservations and alert state of one account after its first `version` events.

    An account exists once it has any event (`version > 0`). Invariants after every event:
    `available >= 0`, and `held` equals the sum of the open reservations' amounts.
    """

    __slots__ = (
        "account_id",
        "alert_armed",
        "available",
        "closed_reservations",
        "consumed",
        "held",
        "open_reservations",
        "purchased",
        "threshold",
        "transferred_in",
        "transferred_out",
        "updated_at",
        "version",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        """The account."""
        self.version = 0
        """Version of the last event applied; 0 for an account with no events."""
        self.available = 0
        """Credits free to consume, reserve or transfer."""
        self.held = 0
        """Credits held by open reservations."""
        self.threshold = 0
        """Low-balance threshold; 0 means none."""
        self.alert_armed = True
        """False from a low-balance alert until available is back at or above the threshold."""
        self.open_reservations: dict[str, Reserved] = {}
        """Open reservations by id: the event that made each."""
        self.closed_reservations: dict[str, ReservationOutcome] = {}
        """Closed reservations by id, so a late commit or cancel gets the right refusal."""
        self.purchased = 0
        """Lifetime credits purchased."""
        self.consumed = 0
        """Lifetime credits consumed, directly or by committed reservations."""
        self.transferred_in = 0
        """Lifetime credits received by transfers."""
        self.transferred_out = 0
        """Lifetime credits sent by transfers."""
        self.updated_at: datetime | None = None
        """When the last event applied was recorded."""

    @property
    def exists(self) -> bool:
        """True once the account has any event."""
        return self.version > 0

    @property
    def total(self) -> int:
        """Credits the account owns: available plus held."""
        return self.available + self.held

    def apply(self, event: Event) -> AccountState:
        """Fold one event into this state, in place, and return the state.

        Raises `EventOutOfOrder` unless the event is this account's next version, and
        `CorruptEvent` if it contradicts the state (an unknown reservation, a negative balance).
        """
        if event.version != self.version + 1 or event.account_id != self.account_id:
            raise EventOutOfOrder(
                f"event {event.account_id}@{event.version} applied to {self.account_id}@{self.version}"
            )
        try:
            _APPLY[type(event)](self, event)
        except KeyError as exc:
            raise CorruptEvent(f"event {event.account_id}@{event.version}: unknown {exc}") from exc
        self.version = event.version
        self.updated_at = event.occurred_at
        return self

    def copy(self) -> AccountState:
        """An independent copy (applying events to it leaves this state unchanged)."""
        twin = AccountState(self.account_id)
        for name in AccountState.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.open_reservations = dict(self.open_reservations)
        twin.closed_reservations = dict(self.closed_reservations)
        return twin

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able snapshot; `from_snapshot` of it plus later events equals a full replay."""
        return {
            "format": SNAPSHOT_FORMAT,
            "account_id": self.account_id,
            "version": self.version,
            "available": self.available,
            "held": self.held,
            "threshold": self.threshold,
            "alert_armed": self.alert_armed,
            "purchased": self.purchased,
            "consumed": self.consumed,
            "transferred_in": self.transferred_in,
            "transferred_out": self.transferred_out,
            "updated_at": None if self.updated_at is None else utc_text(self.updated_at),
            "open_reservations": [
                {
                    "version": event.version,
                    "occurred_at": utc_text(event.occurred_at),
                    "trace_id": event.trace_id,
                    "body": event.to_body(),
                }
                for event in self.open_reservations.values()
            ],
            "closed_reservations": {key: str(outcome) for key, outcome in self.closed_reservations.items()},
        }

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> AccountState:
        """Restore a state from `to_snapshot()`; raises `CorruptEvent` if it is inconsistent."""
        try:
            return _restore(snapshot)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptEvent(f"snapshot of {snapshot.get('account_id')!r}: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccountState):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in AccountState.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"AccountState({self.account_id!r}, version={self.version}, available={self.available}, "
            f"held={self.held}, open={len(self.open_reservations)}, threshold={self.threshold}, "
            f"alert_armed={self.alert_armed})"
        )


def replay(account_id: str, events: Iterable[Event], *, snapshot: AccountState | None = None) -> AccountState:
    """The state after `events`, starting from `snapshot` (not modified) or from nothing.

    `events` must continue the snapshot's version without gaps.
    """
    state = snapshot.copy() if snapshot is not None else AccountState(account_id)
    if state.account_id != account_id:
        raise EventOutOfOrder(f"snapshot of {state.account_id!r} used to replay {account_id!r}")
    apply = state.apply
    for event in events:
        apply(event)
    return state


def _rearm(state: AccountState) -> None:
    if not state.alert_armed and state.available >= state.threshold:
        state.alert_armed = True


def _spent(state: AccountState) -> None:
    if state.available < 0:
        raise CorruptEvent(f"account {state.account_id}: available balance would go negative")


def _purchased(state: AccountState, event: Purchased) -> None:
    state.available += event.amount
    state.purchased += event.amount
    _rearm(state)


def _consumed(state: AccountState, event: Consumed) -> None:
    state.available -= event.amount
    state.consumed += event.amount
    _spent(state)


def _reserved(state: AccountState, event: Reserved) -> None:
    state.available -= event.amount
    state.held += event.amount
    state.open_reservations[event.reservation_id] = event
    _spent(state)


def _committed(state: AccountState, event: ReservationCommitted) -> None:
    reservation = state.open_reservations.pop(event.reservation_id)
    if event.committed + event.released != reservation.amount:
        raise CorruptEvent(f"commit of {event.reservation_id} does not add up to its reservation")
    state.held -= reservation.amount
    state.available += event.released
    state.consumed += event.committed
    state.closed_reservations[event.reservation_id] = ReservationOutcome.COMMITTED
    _rearm(state)


def _release(state: AccountState, reservation_id: str, released: int, outcome: ReservationOutcome) -> None:
    reservation = state.open_reservations.pop(reservation_id)
    if released != reservation.amount:
        raise CorruptEvent(f"release of {reservation_id} does not match its reservation")
    state.held -= released
    state.available += released
    state.closed_reservations[reservation_id] = outcome
    _rearm(state)


def _cancelled(state: AccountState, event: ReservationCancelled) -> None:
    _release(state, event.reservation_id, event.released, ReservationOutcome.CANCELLED)


def _expired(state: AccountState, event: ReservationExpired) -> None:
    _release(state, event.reservation_id, event.released, ReservationOutcome.EXPIRED)


def _transferred_out(state: AccountState, event: TransferredOut) -> None:
    state.available -= event.amount
    state.transferred_out += event.amount
    _spent(state)


def _transferred_in(state: AccountState, event: TransferredIn) -> None:
    state.available += event.amount
    state.transferred_in += event.amount
    _rearm(state)


def _threshold_set(state: AccountState, event: ThresholdSet) -> None:
    state.threshold = event.threshold
    state.alert_armed = True


def _alerted(state: AccountState, event: LowBalanceAlerted) -> None:
    state.alert_armed = False


_APPLY: dict[type[Event], Callable[[AccountState, Any], None]] = {
    Purchased: _purchased,
    Consumed: _consumed,
    Reserved: _reserved,
    ReservationCommitted: _committed,
    ReservationCancelled: _cancelled,
    ReservationExpired: _expired,
    TransferredOut: _transferred_out,
    TransferredIn: _transferred_in,
    ThresholdSet: _threshold_set,
    LowBalanceAlerted: _alerted,
}


def _restore(snapshot: Mapping[str, Any]) -> AccountState:
    if snapshot["format"] != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown snapshot format {snapshot['format']!r}")
    state = AccountState(_typed(snapshot, "account_id", str))
    for name in ("version", "available", "held", "threshold", "purchased", "consumed"):
        setattr(state, name, _typed(snapshot, name, int))
    state.transferred_in = _typed(snapshot, "transferred_in", int)
    state.transferred_out = _typed(snapshot, "transferred_out", int)
    state.alert_armed = _typed(snapshot, "alert_armed", bool)
    updated_at = snapshot["updated_at"]
    state.updated_at = None if updated_at is None else parse_utc(updated_at)
    for row in snapshot["open_reservations"]:
        event = Reserved.from_body(
            state.account_id, row["version"], parse_utc(row["occurred_at"]), row["trace_id"], row["body"]
        )
        state.open_reservations[event.reservation_id] = event
    state.closed_reservations = {
        key: ReservationOutcome(value) for key, value in snapshot["closed_reservations"].items()
    }
    if state.available < 0 or state.held != sum(r.amount for r in state.open_reservations.values()):
        raise ValueError("balances do not match the open reservations")
    return state


def _typed(snapshot: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = snapshot[key]
    if type(value) is not kind:
        raise TypeError(f"{key} is not {kind.__name__}")
    return value
