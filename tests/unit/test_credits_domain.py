"""Credits ledger rules: balances, reservations, alerts, errors, snapshots and the stored form."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from servers.credits.account import AccountState, EventOutOfOrder, replay
from servers.credits.audit import GENESIS_HASH, seal
from servers.credits.commands import (
    AccountCommand,
    CancelReservation,
    CommitReservation,
    Consume,
    LedgerLimits,
    Purchase,
    Reserve,
    SetThreshold,
    Transfer,
)
from servers.credits.domain import (
    Decision,
    decide,
    decide_transfer,
    expire_reservations,
)
from servers.credits.events import (
    Consumed,
    CorruptEvent,
    Event,
    LowBalanceAlerted,
    Purchased,
    ReservationCommitted,
    ReservationExpired,
    Reserved,
    SealedPaymentReference,
    decode_event,
)
from servers.mesh.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REF = SealedPaymentReference("v1:0badc0de:c2VhbGVk", "0badc0de:" + "ab" * 32)


def run(state: AccountState, command: AccountCommand, now: datetime = T0, **kwargs: object) -> Decision:
    """Decide and apply, as the service does once the store accepted the events."""
    decision = decide(state, command, now=now, trace_id="4bf92f3577b34da6a3ce929d0e0e4736", **kwargs)  # type: ignore[arg-type]
    for event in decision.events:
        state.apply(event)
    return decision


def funded(amount: int = 100, account_id: str = "acme") -> AccountState:
    state = AccountState(account_id)
    run(state, Purchase(account_id, amount, REF))
    return state


def refusal(state: AccountState, command: AccountCommand, now: datetime = T0, **kwargs: object) -> DomainError:
    before = state.to_snapshot()
    with pytest.raises(DomainError) as caught:
        decide(state, command, now=now, **kwargs)  # type: ignore[arg-type]
    assert state.to_snapshot() == before, "a refused command must not change the state"
    return caught.value


def types(events: Iterable[Event]) -> list[str]:
    return [event.TYPE for event in events]


# -- balances -----------------------------------------------------------------------------------


def test_first_purchase_creates_the_account_with_version_1() -> None:
    state = AccountState("acme")
    decision = run(state, Purchase("acme", 250, REF))
    assert decision.primary.version == 1
    assert (state.exists, state.available, state.held, state.total, state.version) == (True, 250, 0, 250, 1)


def test_consume_more_than_available_is_insufficient_credits_with_the_available_amount() -> None:
    state = funded(100)
    error = refusal(state, Consume("acme", 101))
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "INSUFFICIENT_CREDITS"
    assert error.metadata["available"] == "100"
    assert error.metadata["requested"] == "101"
    assert [(v.type, v.subject) for v in error.violations] == [("BALANCE", "accounts/acme")]


def test_consume_exactly_the_available_balance_leaves_zero() -> None:
    state = funded(100)
    run(state, Consume("acme", 100))
    assert (state.available, state.consumed) == (0, 100)
    assert refusal(state, Consume("acme", 1)).reason == "INSUFFICIENT_CREDITS"


def test_held_credits_count_against_the_available_balance() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60))
    assert (state.available, state.held, state.total) == (40, 60, 100)
    error = refusal(state, Consume("acme", 50))
    assert (error.reason, error.metadata["available"]) == ("INSUFFICIENT_CREDITS", "40")
    assert refusal(state, Reserve("acme", "r2", 41)).reason == "INSUFFICIENT_CREDITS"


def test_commands_other_than_purchase_need_an_existing_account() -> None:
    empty = AccountState("ghost")
    for command in (
        Consume("ghost", 1),
        Reserve("ghost", "r1", 1),
        CommitReservation("ghost", "r1"),
        CancelReservation("ghost", "r1"),
        SetThreshold("ghost", 10),
    ):
        error = refusal(empty, command)
        assert isinstance(error, NotFound)
        assert error.reason == "ACCOUNT_NOT_FOUND"


def test_purchase_beyond_the_balance_limit_is_refused() -> None:
    limits = LedgerLimits(max_balance=1_000)
    state = AccountState("acme")
    run(state, Purchase("acme", 900, REF), limits=limits)
    assert refusal(state, Purchase("acme", 101, REF), limits=limits).reason == "BALANCE_LIMIT_EXCEEDED"
    run(state, Purchase("acme", 100, REF), limits=limits)
    assert state.total == 1_000


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, -(10**18), 10**15 + 1, 2**63, True, 1.5])
@pytest.mark.parametrize("make", [lambda a: Consume("acme", a), lambda a: Reserve("acme", "r9", a)])
def test_bad_amounts_are_invalid_argument_on_the_amount_field(amount: object, make: object) -> None:
    error = refusal(funded(), make(amount))  # type: ignore[operator]
    assert isinstance(error, InvalidArgument)
    assert error.metadata["field"] == "amount"


def test_largest_allowed_amount_is_accepted() -> None:
    state = AccountState("acme")
    run(state, Purchase("acme", 10**15, REF))
    assert state.available == 10**15


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (Consume("", 1), "account_id"),
        (Consume("-acme", 1), "account_id"),
        (Consume("a" * 129, 1), "account_id"),
        (Consume("acme corp", 1), "account_id"),
        (Consume("acme", 1, description="x" * 1025), "description"),
        (Consume("acme", 1, reference="r" * 257), "reference"),
        (Consume("acme", 1, reference="a\x00b"), "reference"),
        (Purchase("acme", 1, SealedPaymentReference("", "")), "payment_reference"),
        (Reserve("acme", "", 1), "reservation_id"),
        (Reserve("acme", "r1", 1, expire_time=T0), "expire_time"),
        (Reserve("acme", "r1", 1, expire_time=T0 - timedelta(seconds=1)), "expire_time"),
        (Reserve("acme", "r1", 1, expire_time=T0 + timedelta(days=31)), "expire_time"),
        (Reserve("acme", "r1", 1, expire_time=datetime(2026, 3, 2)), "expire_time"),
        (Reserve("acme", "r1", 1, expire_time=T0 + timedelta(hours=1), ttl=timedelta(hours=1)), "expire_time"),
        (Reserve("acme", "r1", 1, ttl=timedelta(0)), "ttl"),
        (Reserve("acme", "r1", 1, ttl=timedelta(seconds=-5)), "ttl"),
        (Reserve("acme", "r1", 1, ttl=timedelta(days=30, seconds=1)), "ttl"),
        (CommitReservation("acme", "r1", 0), "amount"),
        (CommitReservation("acme", "r1", -3), "amount"),
        (CancelReservation("acme", "bad id"), "reservation_id"),
        (SetThreshold("acme", -1), "threshold"),
        (SetThreshold("acme", 10**15 + 1), "threshold"),
    ],
)
def test_malformed_commands_name_the_request_field(command: AccountCommand, field: str) -> None:
    state = funded() if command.account_id == "acme" else AccountState(command.account_id)
    error = refusal(state, command)
    assert isinstance(error, InvalidArgument)
    assert error.metadata["field"] == field


# -- reservations -------------------------------------------------------------------------------


def test_reserve_without_expiry_uses_the_default_lifetime() -> None:
    state = funded()
    decision = run(state, Reserve("acme", "r1", 10))
    assert isinstance(decision.primary, Reserved)
    assert decision.primary.expires_at == T0 + timedelta(minutes=15)
    run(state, Reserve("acme", "r2", 10, ttl=timedelta(hours=2)))
    assert state.open_reservations["r2"].expires_at == T0 + timedelta(hours=2)


def test_partial_commit_consumes_part_and_releases_the_remainder() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60))
    decision = run(state, CommitReservation("acme", "r1", 25))
    assert isinstance(decision.primary, ReservationCommitted)
    assert (decision.primary.committed, decision.primary.released) == (25, 35)
    assert (state.available, state.held, state.consumed, state.total) == (75, 0, 25, 75)
    assert "r1" not in state.open_reservations


def test_full_commit_consumes_everything_reserved() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60))
    decision = run(state, CommitReservation("acme", "r1"))
    assert isinstance(decision.primary, ReservationCommitted)
    assert (decision.primary.committed, decision.primary.released) == (60, 0)
    assert (state.available, state.held) == (40, 0)


def test_commit_more_than_reserved_is_invalid_argument() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60))
    error = refusal(state, CommitReservation("acme", "r1", 61))
    assert isinstance(error, InvalidArgument)
    assert error.metadata["field"] == "amount"


def test_cancel_releases_the_whole_reservation() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60))
    run(state, CancelReservation("acme", "r1"))
    assert (state.available, state.held, state.consumed) == (100, 0, 0)


def test_expired_reservation_cannot_be_committed_even_before_the_sweeper_records_it() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60, ttl=timedelta(minutes=5)))
    late = T0 + timedelta(minutes=5)
    assert refusal(state, CommitReservation("acme", "r1"), late).reason == "RESERVATION_EXPIRED"
    assert refusal(state, CancelReservation("acme", "r1"), late).reason == "RESERVATION_EXPIRED"
    # One microsecond before its expiry it still commits.
    run(state.copy(), CommitReservation("acme", "r1"), late - timedelta(microseconds=1))


def test_sweeper_releases_expired_reservations_with_events() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 30, ttl=timedelta(minutes=5)))
    run(state, Reserve("acme", "r2", 20, ttl=timedelta(minutes=10)))
    assert expire_reservations(state, now=T0 + timedelta(minutes=4)) == []
    released = expire_reservations(state, now=T0 + timedelta(minutes=7))
    assert [(type(e), e.version) for e in released] == [(ReservationExpired, 4)]
    for event in released:
        state.apply(event)
    assert (state.available, state.held, list(state.open_reservations)) == (80, 20, ["r2"])
    assert refusal(state, CommitReservation("acme", "r1"), T0 + timedelta(minutes=7)).reason == ("RESERVATION_EXPIRED")


def test_a_command_first_releases_expired_reservations_and_can_use_their_credits() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 80, ttl=timedelta(minutes=1)))
    decision = run(state, Consume("acme", 90), T0 + timedelta(minutes=2))
    assert types(decision.events) == ["ReservationExpired", "Consumed"]
    assert decision.primary.version == 4
    assert (state.available, state.held) == (10, 0)


@pytest.mark.parametrize(
    ("close", "reason"),
    [
        (CommitReservation("acme", "r1", 10), "RESERVATION_ALREADY_COMMITTED"),
        (CancelReservation("acme", "r1"), "RESERVATION_CANCELLED"),
    ],
)
def test_closed_reservations_refuse_a_second_close(close: AccountCommand, reason: str) -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 60))
    run(state, close)
    assert refusal(state, CommitReservation("acme", "r1")).reason == reason
    assert refusal(state, CancelReservation("acme", "r1")).reason == reason


def test_unknown_reservation_is_not_found() -> None:
    error = refusal(funded(), CommitReservation("acme", "nope"))
    assert isinstance(error, NotFound)
    assert error.reason == "RESERVATION_NOT_FOUND"


def test_reservation_ids_are_never_reused_within_an_account() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 10))
    assert refusal(state, Reserve("acme", "r1", 10)).reason == "RESERVATION_EXISTS"
    run(state, CancelReservation("acme", "r1"))
    assert refusal(state, Reserve("acme", "r1", 10)).reason == "RESERVATION_EXISTS"


def test_open_reservations_per_account_are_bounded() -> None:
    limits = LedgerLimits(max_open_reservations=2)
    state = funded(100)
    run(state, Reserve("acme", "r1", 1), limits=limits)
    run(state, Reserve("acme", "r2", 1), limits=limits)
    assert refusal(state, Reserve("acme", "r3", 1), limits=limits).reason == "TOO_MANY_OPEN_RESERVATIONS"


# -- low-balance alerts -------------------------------------------------------------------------


def alerts(events: Iterable[Event]) -> list[LowBalanceAlerted]:
    return [e for e in events if isinstance(e, LowBalanceAlerted)]


def test_alert_fires_once_per_crossing_and_rearms_at_the_threshold() -> None:
    state = funded(100)
    run(state, SetThreshold("acme", 50))
    fired: list[LowBalanceAlerted] = []
    for command in (
        Consume("acme", 30),  # 70: above
        Consume("acme", 30),  # 40: crosses -> alert
        Consume("acme", 10),  # 30: still below, no second alert
        Purchase("acme", 20, REF),  # 50: back at the threshold -> re-armed
        Consume("acme", 1),  # 49: crosses again -> alert
    ):
        fired += alerts(run(state, command).events)
    assert [(a.threshold, a.available) for a in fired] == [(50, 40), (50, 49)]
    assert not state.alert_armed


def test_alert_follows_its_command_in_the_same_decision() -> None:
    state = funded(100)
    run(state, SetThreshold("acme", 50))
    decision = run(state, Reserve("acme", "r1", 60))
    assert types(decision.events) == ["Reserved", "LowBalanceAlerted"]
    assert decision.alert_fired
    assert decision.events[1].version == decision.primary.version + 1


def test_released_reservation_rearms_the_alert() -> None:
    state = funded(100)
    run(state, SetThreshold("acme", 50))
    run(state, Reserve("acme", "r1", 60, ttl=timedelta(minutes=1)))
    assert not state.alert_armed
    decision = run(state, Reserve("acme", "r2", 60), T0 + timedelta(minutes=2))
    assert types(decision.events) == ["ReservationExpired", "Reserved", "LowBalanceAlerted"]


def test_setting_a_threshold_above_the_balance_alerts_at_once() -> None:
    state = funded(30)
    decision = run(state, SetThreshold("acme", 50))
    assert decision.alert_fired
    assert types(decision.events) == ["ThresholdSet", "LowBalanceAlerted"]
    cleared = run(state, SetThreshold("acme", 0))
    assert not cleared.alert_fired
    run(state, Consume("acme", 30))
    assert state.alert_armed, "no threshold: nothing to alert on"


def test_transfer_can_alert_the_sender() -> None:
    sender, receiver = funded(100, "a"), funded(0 + 1, "b")
    run(sender, SetThreshold("a", 50))
    decision = decide_transfer(sender, receiver, Transfer("t1", "a", "b", 60), now=T0)
    assert types(decision.outgoing.events) == ["TransferredOut", "LowBalanceAlerted"]
    assert types(decision.incoming.events) == ["TransferredIn"]


# -- transfers ----------------------------------------------------------------------------------


def test_transfer_moves_credits_and_records_both_sides() -> None:
    sender, receiver = funded(100, "a"), funded(5, "b")
    decision = decide_transfer(sender, receiver, Transfer("t1", "a", "b", 40, "rent"), now=T0)
    for event in decision.outgoing.events:
        sender.apply(event)
    for event in decision.incoming.events:
        receiver.apply(event)
    assert (sender.available, receiver.available) == (60, 45)
    out, into = decision.outgoing.primary, decision.incoming.primary
    assert (out.transfer_id, out.counterparty_account_id, out.version) == ("t1", "b", 2)  # type: ignore[attr-defined]
    assert (into.transfer_id, into.counterparty_account_id, into.version) == ("t1", "a", 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("transfer", "expected"),
    [
        (Transfer("t1", "a", "b", 101), "INSUFFICIENT_CREDITS"),
        (Transfer("t1", "a", "a", 1), "INVALID_ARGUMENT"),
        (Transfer("t1", "a", "b", 0), "INVALID_ARGUMENT"),
        (Transfer("", "a", "b", 1), "INVALID_ARGUMENT"),
    ],
)
def test_transfer_refusals(transfer: Transfer, expected: str) -> None:
    receiver = funded(1, transfer.to_account_id)
    with pytest.raises(DomainError) as caught:
        decide_transfer(funded(100, transfer.from_account_id), receiver, transfer, now=T0)
    assert caught.value.reason == expected


def test_transfer_to_an_account_that_does_not_exist_is_refused() -> None:
    with pytest.raises(NotFound) as caught:
        decide_transfer(funded(100, "a"), AccountState("nobody"), Transfer("t1", "a", "nobody", 1), now=T0)
    assert caught.value.reason == "ACCOUNT_NOT_FOUND"
    assert caught.value.resource_name == "nobody"


# -- event order, time and decoding ----------------------------------------------------------------


def test_event_times_never_go_backwards_within_an_account() -> None:
    state = funded(100)
    earlier = T0 - timedelta(seconds=30)  # another server with a slower clock
    decision = run(state, Consume("acme", 1), earlier)
    assert decision.primary.occurred_at == T0


def test_apply_refuses_gaps_repeats_and_other_accounts() -> None:
    state = funded(100)
    consumed = Consumed("acme", 2, T0, "", 5)
    with pytest.raises(EventOutOfOrder):
        state.copy().apply(Consumed("acme", 3, T0, "", 5))
    with pytest.raises(EventOutOfOrder):
        state.copy().apply(Consumed("other", 2, T0, "", 5))
    state.apply(consumed)
    with pytest.raises(EventOutOfOrder):
        state.apply(consumed)


def test_apply_refuses_an_event_that_would_make_available_negative() -> None:
    with pytest.raises(CorruptEvent):
        funded(10).apply(Consumed("acme", 2, T0, "", 11))


@pytest.mark.parametrize(
    ("type_name", "body"),
    [
        ("Purchased", '{"amount": 5}'),
        ("Consumed", '{"amount": "5", "description": "", "reference": ""}'),
        ("Consumed", "[1, 2]"),
        ("Consumed", "not json"),
        ("Consumed", '{"amount":5,"description":"","reference":""} trailing'),
        ("Consumed", ""),
        ("Consumed", "[" * 100_000),
        ("Teleported", '{"amount": 5}'),
        ("Reserved", '{"amount":5,"description":"","expires_at":"soon","reservation_id":"r"}'),
    ],
)
def test_undecodable_rows_raise_corrupt_event(type_name: str, body: str) -> None:
    with pytest.raises(CorruptEvent):
        decode_event("acme", 1, type_name, body, T0, "")


# -- sequences: never negative, snapshot + tail == replay, stored form round trip -------------------


def random_history(seed: int, steps: int) -> tuple[dict[str, AccountState], list[Event]]:
    """A seeded random mix of every command over three accounts; returns states and all events."""
    rng = random.Random(seed)
    names = ["a", "b", "c"]
    states = {name: AccountState(name) for name in names}
    history: list[Event] = []
    now = T0
    for step in range(steps):
        now += timedelta(seconds=rng.choice([0, 1, 7, 45, 400]))
        name = rng.choice(names)
        state = states[name]
        before = state.to_snapshot()
        pick = rng.random()
        reservation = rng.choice([*state.open_reservations, "r-missing", *list(state.closed_reservations)[:3]])
        amount = rng.choice([1, 2, 5, 10, 50, 200, 1_000])
        try:
            if 0.7 <= pick < 0.8:
                other = states[rng.choice([n for n in names if n != name])]
                transfer = decide_transfer(state, other, Transfer(f"t{step}", name, other.account_id, amount), now=now)
                assert state.to_snapshot() == before
                for side, decision in ((state, transfer.outgoing), (other, transfer.incoming)):
                    for event in decision.events:
                        side.apply(event)
                        history.append(event)
                continue
            command: AccountCommand
            if pick < 0.15:
                command = Purchase(name, amount * rng.choice([1, 3]), REF)
            elif pick < 0.35:
                command = Consume(name, amount)
            elif pick < 0.5:
                command = Reserve(name, f"r{step}", amount, ttl=timedelta(seconds=rng.choice([30, 300, 3600])))
            elif pick < 0.6:
                command = CommitReservation(name, reservation, rng.choice([None, 1, amount]))
            elif pick < 0.7:
                command = CancelReservation(name, reservation)
            elif pick < 0.9:
                command = SetThreshold(name, rng.choice([0, 10, 100, 500]))
            else:
                for event in expire_reservations(state, now=now):
                    state.apply(event)
                    history.append(event)
                continue
            decision = decide(state, command, now=now, trace_id=f"{step:032x}")
            assert state.to_snapshot() == before, "decisions must not mutate the state"
            for event in decision.events:
                state.apply(event)
                history.append(event)
        except DomainError:
            assert state.to_snapshot() == before
        for checked in states.values():
            assert checked.available >= 0
            assert checked.held == sum(r.amount for r in checked.open_reservations.values())
            assert checked.total == (
                checked.purchased + checked.transferred_in - checked.consumed - checked.transferred_out
            )
    return states, history


@pytest.mark.parametrize("seed", range(6))
def test_random_command_sequences_never_make_a_balance_negative(seed: int) -> None:
    states, history = random_history(seed, 1_500)
    assert len(history) > 500
    assert {type(e).__name__ for e in history} >= {
        "Purchased",
        "Consumed",
        "Reserved",
        "ReservationCommitted",
        "ReservationCancelled",
        "ReservationExpired",
        "TransferredOut",
        "TransferredIn",
        "ThresholdSet",
        "LowBalanceAlerted",
    }
    total_in = sum(s.purchased for s in states.values())
    total_out = sum(s.consumed for s in states.values())
    assert sum(s.total for s in states.values()) == total_in - total_out, "transfers create no credits"


def test_snapshot_plus_later_events_equals_a_full_replay() -> None:
    states, history = random_history(11, 1_200)
    for name, final in states.items():
        events = [e for e in history if e.account_id == name]
        assert replay(name, events) == final
        for cut in (0, 1, len(events) // 3, len(events) // 2, len(events) - 1, len(events)):
            snapshot = replay(name, events[:cut]).to_snapshot()
            restored = AccountState.from_snapshot(json.loads(json.dumps(snapshot)))
            assert replay(name, events[cut:], snapshot=restored) == final


def test_events_survive_their_stored_row_form() -> None:
    _, history = random_history(5, 600)
    for name in "abc":
        events = [e for e in history if e.account_id == name]
        rows = seal(events, GENESIS_HASH)
        assert [row.decode() for row in rows] == events
        # A PostgreSQL JSONB column hands the body back decoded, keys in its own order.
        for row, event in zip(rows, events, strict=True):
            shuffled = dict(reversed(list(json.loads(row.body).items())))
            assert decode_event(row.account_id, row.version, row.type, shuffled, row.occurred_at, "x") == (
                type(event).from_body(event.account_id, event.version, event.occurred_at, "x", shuffled)
            )


@pytest.mark.parametrize(
    "text",
    [
        '{"amount":5,"description":"d","reference":"r"}',
        '{"reference": "r", "amount": 5, "description": "d"}',
        ' {"amount":5,"description":"d","reference":"r"}\n',
    ],
)
def test_body_text_decodes_whatever_its_formatting(text: str) -> None:
    assert decode_event("acme", 2, "Consumed", text, T0, "") == Consumed("acme", 2, T0, "", 5, "d", "r")


def test_rows_read_back_in_another_time_zone_decode_to_equal_events() -> None:
    state = funded(100)
    decision = run(state, Reserve("acme", "r1", 10, expire_time=T0 + timedelta(hours=1)))
    row = seal([decision.primary], b"\x01" * 32)[0]
    local = row.occurred_at.astimezone(timezone(timedelta(hours=2)))
    assert decode_event(row.account_id, row.version, row.type, row.body, local, row.trace_id) == decision.primary


def test_snapshot_that_does_not_add_up_is_refused() -> None:
    state = funded(100)
    run(state, Reserve("acme", "r1", 10))
    snapshot = state.to_snapshot()
    snapshot["held"] = 11
    with pytest.raises(CorruptEvent):
        AccountState.from_snapshot(snapshot)
    with pytest.raises(CorruptEvent):
        AccountState.from_snapshot({**state.to_snapshot(), "format": 99})


def test_purchase_event_keeps_only_the_sealed_reference() -> None:
    decision = run(AccountState("acme"), Purchase("acme", 5, REF))
    assert isinstance(decision.primary, Purchased)
    assert decision.primary.to_body() == {
        "amount": 5,
        "payment_reference": REF.ciphertext,
        "payment_reference_lookup": REF.lookup,
    }
