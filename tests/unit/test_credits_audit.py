"""Credits audit chain: hashing, tamper detection that names the event, and signed ledger heads."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from datetime import UTC, datetime, timedelta, timezone

import nacl.exceptions
import nacl.signing
import pytest

from servers.credits.account import AccountState
from servers.credits.audit import (
    GENESIS_HASH,
    AccountHead,
    ChainVerifier,
    MismatchKind,
    event_hash,
    head_signing_bytes,
    ledger_head,
    seal,
    verify_chain,
)
from servers.credits.commands import AccountCommand, Consume, Purchase, Reserve
from servers.credits.domain import decide
from servers.credits.events import Consumed, Event, SealedPaymentReference, StoredEvent, utc_text

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REF = SealedPaymentReference("v1:0badc0de:c2VhbGVk", "0badc0de:" + "ab" * 32)


def history(account_id: str, consumes: int = 5) -> list[Event]:
    state = AccountState(account_id)
    events: list[Event] = []
    commands: list[AccountCommand] = [Purchase(account_id, 1_000, REF), Reserve(account_id, "r1", 10)]
    commands += [Consume(account_id, 1 + i, reference=f"order-{i}") for i in range(consumes)]
    for step, command in enumerate(commands):
        decision = decide(state, command, now=T0 + timedelta(seconds=step), trace_id=f"{step:032x}")
        for event in decision.events:
            state.apply(event)
            events.append(event)
    return events


def test_chain_starts_at_genesis_and_links_every_event_to_its_predecessor() -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    assert rows[0].prev_hash == bytes(32)
    for previous, row in itertools.pairwise(rows):
        assert row.prev_hash == previous.hash
    assert len({row.hash for row in rows}) == len(rows)
    assert verify_chain(rows) is None


def test_hash_follows_the_documented_encoding() -> None:
    """Pins the encoding: changing it would orphan every chain already stored."""
    event = Consumed("acme", 7, datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "ab" * 16, 42, "d", "r")
    prev = bytes(range(32))

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    expected = hashlib.sha256(
        b"shieldx.credits.event.v1"
        + field(b"acme")
        + (7).to_bytes(8, "big")
        + field(b"Consumed")
        + field(b'{"amount":42,"description":"d","reference":"r"}')
        + field(b"2026-01-02T03:04:05.000006Z")
        + field(b"ab" * 16)
        + field(prev)
    ).digest()
    assert seal([event], prev)[0].hash == expected
    assert expected.hex() == "b737a18cf1661b848f47fb1110ced011df51b6a82668b85135f2e96be352b779"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(2026, 1, 2, 5, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 22, 4, 5, 6, tzinfo=timezone(-timedelta(hours=5), "EST")),
    ],
)
def test_an_instant_has_one_text_whatever_its_time_zone(moment: datetime) -> None:
    assert utc_text(moment) == "2026-01-02T03:04:05.000006Z"
    assert utc_text(moment.replace(microsecond=0)) == "2026-01-02T03:04:05.000000Z"
    assert utc_text(moment) == "2026-01-02T03:04:05.000006Z", "the same instant again, after another"


@pytest.mark.parametrize(
    "change",
    [
        {"body": '{"amount":4,"description":"","reference":"order-2"}'},
        {"type": "Purchased"},
        {"trace_id": "f" * 32},
        {"occurred_at": T0 + timedelta(days=1)},
        {"account_id": "acme2"},
    ],
)
def test_a_changed_event_is_named_with_expected_and_stored_hash(change: dict[str, object]) -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    original = rows[4]
    rows[4] = dataclasses.replace(original, **change)  # type: ignore[arg-type]
    mismatch = verify_chain(rows)
    assert mismatch is not None
    if "account_id" in change:
        # Moved to another account's chain, it is that chain's first event out of place.
        assert (mismatch.account_id, mismatch.kind) == ("acme2", MismatchKind.VERSION_GAP)
        return
    assert (mismatch.account_id, mismatch.version, mismatch.kind) == ("acme", 5, MismatchKind.HASH)
    assert mismatch.stored_hash == original.hash
    assert mismatch.expected_hash not in (original.hash, b"")


def test_a_changed_event_with_a_recomputed_hash_breaks_the_next_link() -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    forged = dataclasses.replace(rows[2], body=rows[2].body.replace('"amount":1', '"amount":0'))
    forged = dataclasses.replace(forged, hash=seal([forged.decode()], forged.prev_hash)[0].hash)
    rows[2] = forged
    mismatch = verify_chain(rows)
    assert mismatch is not None
    assert (mismatch.version, mismatch.kind) == (4, MismatchKind.PREVIOUS_HASH)
    assert (mismatch.expected_hash, mismatch.stored_hash) == (forged.hash, rows[3].prev_hash)


def test_a_deleted_event_is_a_version_gap_at_its_successor() -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    del rows[3]
    mismatch = verify_chain(rows)
    assert mismatch is not None
    assert (mismatch.version, mismatch.kind, mismatch.expected_version) == (5, MismatchKind.VERSION_GAP, 4)


def test_a_body_that_is_not_json_is_a_hash_mismatch_not_a_crash() -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    rows[1] = dataclasses.replace(rows[1], body="{broken")
    mismatch = verify_chain(rows)
    assert mismatch is not None
    assert (mismatch.version, mismatch.kind) == (2, MismatchKind.HASH)


def test_a_body_reformatted_by_the_database_still_verifies() -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    # JSONB hands bodies back with its own key order and spacing; the content is unchanged.
    jsonb = [dataclasses.replace(r, body=json.dumps(dict(reversed(json.loads(r.body).items())))) for r in rows]
    assert verify_chain(jsonb) is None
    decoded_bodies = [
        event_hash(r.account_id, r.version, r.type, json.loads(r.body), r.occurred_at, r.trace_id, r.prev_hash)
        for r in rows
    ]
    assert decoded_bodies == [r.hash for r in rows]


def test_chains_are_per_account_and_interleaved_rows_verify() -> None:
    a, b = seal(history("a"), GENESIS_HASH), seal(history("b", 8), GENESIS_HASH)
    interleaved = [row for pair in zip(a, b, strict=False) for row in pair] + b[len(a) :]
    verifier = ChainVerifier()
    assert all(verifier.check(row) is None for row in interleaved)
    assert (verifier.events_checked, verifier.accounts_checked) == (len(a) + len(b), 2)
    assert sorted((h.account_id, h.version, h.hash) for h in verifier.heads()) == [
        ("a", a[-1].version, a[-1].hash),
        ("b", b[-1].version, b[-1].hash),
    ]
    b[2] = dataclasses.replace(b[2], trace_id="")
    mismatch = verify_chain([row for pair in zip(a, b, strict=False) for row in pair])
    assert mismatch is not None
    assert (mismatch.account_id, mismatch.version) == ("b", 3)


def test_an_account_moved_between_stores_keeps_a_valid_chain() -> None:
    rows = seal(history("acme"), GENESIS_HASH)
    # A shard move copies rows as they are: nothing in the hash depends on where they live.
    moved = [StoredEvent(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}) for r in rows]
    assert verify_chain(moved) is None


def test_appending_continues_the_chain_from_the_stored_head() -> None:
    events = history("acme")
    first, rest = seal(events[:3], GENESIS_HASH), seal(events[3:], seal(events[:3], GENESIS_HASH)[-1].hash)
    assert first + rest == seal(events, GENESIS_HASH)


def test_ledger_head_is_order_independent_and_changes_with_any_head() -> None:
    heads = [AccountHead("b", 3, b"\x02" * 32), AccountHead("a", 5, b"\x01" * 32), AccountHead("c", 1, bytes(32))]
    head = ledger_head(heads, T0)
    assert head == ledger_head(list(reversed(heads)), T0)
    assert (head.account_count, head.event_count) == (3, 9)
    changed = [heads[0], AccountHead("a", 5, b"\x03" * 32), heads[2]]
    assert ledger_head(changed, T0).digest != head.digest
    assert ledger_head(heads[:2], T0).digest != head.digest
    # ("ab", ...) and ("a", "b"...) must not collide: fields are length-prefixed.
    assert (
        ledger_head([AccountHead("ab", 1, bytes(32))], T0).digest
        != ledger_head([AccountHead("a", 1, bytes(32))], T0).digest
    )


def test_signed_head_verifies_and_a_different_time_or_digest_does_not() -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    head = ledger_head([AccountHead("a", 5, b"\x01" * 32)], T0)
    signature = key.sign(head_signing_bytes(head)).signature
    key.verify_key.verify(head_signing_bytes(head), signature)
    for other in (
        dataclasses.replace(head, taken_at=T0 + timedelta(seconds=1)),
        dataclasses.replace(head, digest=bytes(32)),
        dataclasses.replace(head, event_count=4),
    ):
        with pytest.raises(nacl.exceptions.BadSignatureError):
            key.verify_key.verify(head_signing_bytes(other), signature)
