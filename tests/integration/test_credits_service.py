"""The credits ledger service on both backends: every RPC, its refusals, concurrency, idempotency, audit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import nacl.signing
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from clients.credits import CreditsClient
from clients.errors import ShieldxError
from servers.credits.audit import LedgerHead, head_signing_bytes
from servers.credits.projection import Projection
from servers.credits.rebuild import rebuild
from servers.credits.service import build
from servers.mesh.config import MeshConfig
from servers.mesh.storage import CheckViolation, Database, open_database
from shieldx.credits.v1 import credits_pb2 as pb
from tests.conftest import Running, StartService, stop_service, test_config
from tests.support.fuzz import fuzz_service
from tests.support.tokens import TestAuthority

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ROOT = Path(__file__).resolve().parents[2]


def credits_config(tmp_path: Path, store_config: dict[str, str], **settings: Any) -> MeshConfig:
    """A credits server config on the given store, with fast background loops."""
    config = test_config(tmp_path, service="credits", **store_config)
    config.settings = {
        "sweep_interval_seconds": 0.05,
        "alert_poll_seconds": 0.05,
        "head_sign_interval_seconds": 0.05,
        "lag_interval_seconds": 0.05,
        **settings,
    }
    return config


@pytest.fixture
def config(tmp_path: Path, store_config: dict[str, str]) -> MeshConfig:
    return credits_config(tmp_path, store_config)


@pytest.fixture
async def running(start_service: StartService, config: MeshConfig) -> Running:
    return await start_service(build, config)


@pytest.fixture
def client(running: Running) -> CreditsClient:
    return CreditsClient(running.channel)


@contextlib.asynccontextmanager
async def ledger_database(config: MeshConfig) -> AsyncIterator[Database]:
    """A second connection to the service's own store, as an operator would open it."""
    database = await open_database(
        "credits",
        data_dir=config.data_dir,
        database_url=config.database_url,
        schema=config.database_schema or None,
    )
    try:
        yield database
    finally:
        await database.close()


def request_id() -> str:
    return uuid.uuid4().hex


async def purchase(
    client: CreditsClient, account_id: str, amount: int, reference: str = "pay-1"
) -> pb.PurchaseResponse:
    return await client.purchase(
        pb.PurchaseRequest(account_id=account_id, amount=amount, payment_reference=reference, request_id=request_id())
    )


async def refused(call: Awaitable[Any]) -> ShieldxError:
    with pytest.raises(ShieldxError) as caught:
        await call
    return caught.value


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# -- balances ---------------------------------------------------------------------------------------


async def test_purchase_then_consume_moves_the_balance_and_versions(client: CreditsClient) -> None:
    bought = await purchase(client, "acme", 100)
    assert (bought.balance.available, bought.balance.total, bought.event_version) == (100, 100, 1)
    spent = await client.consume(pb.ConsumeRequest(account_id="acme", amount=30, reference="order-7"))
    assert (spent.balance.available, spent.balance.version, spent.event_version) == (70, 2, 2)
    current = await client.get_balance(pb.GetBalanceRequest(account_id="acme"))
    assert (current.balance.available, current.balance.held, current.balance.version) == (70, 0, 2)
    assert current.balance.update_time.ToDatetime(UTC) <= datetime.now(UTC)


async def test_consume_beyond_available_is_insufficient_credits_with_the_available_amount(
    client: CreditsClient,
) -> None:
    await purchase(client, "acme", 10)
    error = await refused(client.consume(pb.ConsumeRequest(account_id="acme", amount=11)))
    assert (error.code, error.reason) == (FAILED_PRECONDITION, "INSUFFICIENT_CREDITS")
    assert error.metadata["available"] == "10"
    balance = await client.get_balance(pb.GetBalanceRequest(account_id="acme"))
    assert balance.balance.available == 10


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.consume(pb.ConsumeRequest(account_id="acme", amount=0)), "amount"),
        (lambda c: c.consume(pb.ConsumeRequest(account_id="acme", amount=-5)), "amount"),
        (lambda c: c.consume(pb.ConsumeRequest(account_id="", amount=1)), "account_id"),
        (lambda c: c.purchase(pb.PurchaseRequest(account_id="acme", amount=1)), "payment_reference"),
        (lambda c: c.purchase(pb.PurchaseRequest(account_id="a b", amount=1, payment_reference="p")), "account_id"),
        (
            lambda c: c.purchase(pb.PurchaseRequest(account_id="acme", amount=1, payment_reference="inv\u202e7")),
            "payment_reference",
        ),
        (
            lambda c: c.purchase(pb.PurchaseRequest(account_id="acme", amount=1, payment_reference="inv\x857")),
            "payment_reference",
        ),
        (lambda c: c.consume(pb.ConsumeRequest(account_id="acme", amount=1, description="a\u2028b")), "description"),
        (lambda c: c.consume(pb.ConsumeRequest(account_id="acme", amount=1, reference="r\u2066x")), "reference"),
        (
            lambda c: c.reserve(pb.ReserveRequest(account_id="acme", amount=1, ttl=duration_pb2.Duration(seconds=-1))),
            "ttl",
        ),
        (
            lambda c: c.transfer(pb.TransferRequest(from_account_id="acme", to_account_id="acme", amount=1)),
            "to_account_id",
        ),
        (lambda c: c.list_transactions(pb.ListTransactionsRequest(page_size=-1)), "page_size"),
        (lambda c: c.list_transactions(pb.ListTransactionsRequest(types=[pb.TRANSACTION_TYPE_UNSPECIFIED])), "types"),
        (lambda c: c.get_balance(pb.GetBalanceRequest(account_id="acme", as_of_version=0)), "as_of_version"),
        (lambda c: c.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=-1)), "threshold"),
        (lambda c: c.get_usage_report(pb.GetUsageReportRequest(period=pb.USAGE_PERIOD_DAY)), "start_time"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    client: CreditsClient, call: Callable[[CreditsClient], Awaitable[Any]], field: str
) -> None:
    await purchase(client, "acme", 10)
    error = await refused(call(client))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error.metadata["field"] == field


async def test_unknown_account_is_account_not_found(client: CreditsClient) -> None:
    for call in (
        client.get_balance(pb.GetBalanceRequest(account_id="ghost")),
        client.consume(pb.ConsumeRequest(account_id="ghost", amount=1)),
        client.set_threshold(pb.SetThresholdRequest(account_id="ghost", threshold=5)),
        client.verify_audit_chain(pb.VerifyAuditChainRequest(account_id="ghost")),
    ):
        error = await refused(call)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


# -- reservations -----------------------------------------------------------------------------------


async def test_reservation_holds_credits_and_a_partial_commit_releases_the_rest(client: CreditsClient) -> None:
    await purchase(client, "acme", 100)
    made = await client.reserve(
        pb.ReserveRequest(account_id="acme", amount=60, ttl=duration_pb2.Duration(seconds=600), description="job")
    )
    assert (made.balance.available, made.balance.held, made.balance.total) == (40, 60, 100)
    assert made.reservation.state == pb.RESERVATION_STATE_OPEN
    error = await refused(client.consume(pb.ConsumeRequest(account_id="acme", amount=50)))
    assert (error.reason, error.metadata["available"]) == ("INSUFFICIENT_CREDITS", "40")
    rid = made.reservation.reservation_id
    committed = await client.commit_reservation(
        pb.CommitReservationRequest(account_id="acme", reservation_id=rid, amount=45)
    )
    assert (committed.committed_amount, committed.released_amount) == (45, 15)
    assert (committed.balance.available, committed.balance.held) == (55, 0)
    error = await refused(client.commit_reservation(pb.CommitReservationRequest(account_id="acme", reservation_id=rid)))
    assert (error.code, error.reason) == (FAILED_PRECONDITION, "RESERVATION_ALREADY_COMMITTED")
    listed = await client.list_reservations(
        pb.ListReservationsRequest(account_id="acme", states=[pb.RESERVATION_STATE_COMMITTED])
    )
    [row] = listed.reservations
    assert (row.reservation_id, row.committed_amount, row.released_amount, row.description) == (rid, 45, 15, "job")
    assert row.HasField("close_time")


async def test_cancel_releases_the_whole_reservation_once(client: CreditsClient) -> None:
    await purchase(client, "acme", 100)
    made = await client.reserve(pb.ReserveRequest(account_id="acme", amount=30))
    rid = made.reservation.reservation_id
    cancelled = await client.cancel_reservation(pb.CancelReservationRequest(account_id="acme", reservation_id=rid))
    assert (cancelled.released_amount, cancelled.balance.available, cancelled.balance.held) == (30, 100, 0)
    error = await refused(client.cancel_reservation(pb.CancelReservationRequest(account_id="acme", reservation_id=rid)))
    assert error.reason == "RESERVATION_CANCELLED"
    error = await refused(
        client.cancel_reservation(pb.CancelReservationRequest(account_id="acme", reservation_id="nope"))
    )
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    open_ones = await client.list_reservations(pb.ListReservationsRequest(states=[pb.RESERVATION_STATE_OPEN]))
    assert list(open_ones.reservations) == []


async def test_expired_reservation_is_released_by_the_sweeper_and_cannot_be_committed(client: CreditsClient) -> None:
    await purchase(client, "acme", 100)
    made = await client.reserve(
        pb.ReserveRequest(account_id="acme", amount=70, ttl=duration_pb2.Duration(nanos=300_000_000))
    )
    rid = made.reservation.reservation_id
    for _ in range(100):
        expired = await client.list_transactions(
            pb.ListTransactionsRequest(account_id="acme", types=[pb.TRANSACTION_TYPE_RESERVATION_EXPIRED])
        )
        if expired.transactions:
            break
        await asyncio.sleep(0.05)
    [release] = expired.transactions
    assert (release.reservation_id, release.released_amount) == (rid, 70)
    balance = await client.get_balance(pb.GetBalanceRequest(account_id="acme"))
    assert (balance.balance.available, balance.balance.held, balance.balance.version) == (100, 0, 3)
    error = await refused(client.commit_reservation(pb.CommitReservationRequest(account_id="acme", reservation_id=rid)))
    assert (error.code, error.reason) == (FAILED_PRECONDITION, "RESERVATION_EXPIRED")
    listed = await client.list_reservations(pb.ListReservationsRequest(states=[pb.RESERVATION_STATE_EXPIRED]))
    assert [r.reservation_id for r in listed.reservations] == [rid]


async def test_a_reservation_past_its_expiry_is_no_longer_held_before_the_sweeper_runs(
    start_service: StartService, tmp_path: Path, store_config: dict[str, str]
) -> None:
    running = await start_service(build, credits_config(tmp_path, store_config, sweep_interval_seconds=3600))
    client = CreditsClient(running.channel)
    await purchase(client, "acme", 100)
    await client.reserve(pb.ReserveRequest(account_id="acme", amount=30))
    await client.reserve(pb.ReserveRequest(account_id="acme", amount=50, ttl=duration_pb2.Duration(nanos=200_000_000)))
    held = (await client.get_balance(pb.GetBalanceRequest(account_id="acme"))).balance
    assert (held.available, held.held, held.total) == (20, 80, 100)
    await asyncio.sleep(0.3)
    released = (await client.get_balance(pb.GetBalanceRequest(account_id="acme"))).balance
    assert (released.available, released.held, released.total) == (70, 30, 100), "the expired 50 are free"
    expired = await client.list_transactions(
        pb.ListTransactionsRequest(account_id="acme", types=[pb.TRANSACTION_TYPE_RESERVATION_EXPIRED])
    )
    assert not expired.transactions, "the sweeper has not recorded the release yet"
    spent = await client.consume(pb.ConsumeRequest(account_id="acme", amount=70))
    assert (spent.balance.available, spent.balance.held) == (0, 30), "a consume may use what the expiry freed"


# -- transfers, history, balances in the past ------------------------------------------------------------


async def test_transfer_moves_credits_and_records_both_sides(client: CreditsClient) -> None:
    await purchase(client, "alice", 100)
    await purchase(client, "bob", 5)
    moved = await client.transfer(
        pb.TransferRequest(from_account_id="alice", to_account_id="bob", amount=30, description="rent")
    )
    assert (moved.from_balance.available, moved.to_balance.available) == (70, 35)
    assert (moved.from_event_version, moved.to_event_version) == (2, 2)
    received = await client.list_transactions(
        pb.ListTransactionsRequest(account_id="bob", types=[pb.TRANSACTION_TYPE_TRANSFERRED_IN])
    )
    [side] = received.transactions
    assert (side.transfer_id, side.counterparty_account_id, side.amount, side.description) == (
        moved.transfer_id,
        "alice",
        30,
        "rent",
    )
    error = await refused(client.transfer(pb.TransferRequest(from_account_id="alice", to_account_id="bob", amount=71)))
    assert (error.reason, error.metadata["available"]) == ("INSUFFICIENT_CREDITS", "70")
    error = await refused(client.transfer(pb.TransferRequest(from_account_id="alice", to_account_id="carol", amount=1)))
    assert error.reason == "ACCOUNT_NOT_FOUND"


async def test_balance_as_of_a_past_version_or_time_is_replayed(client: CreditsClient) -> None:
    await purchase(client, "acme", 100)
    second = await client.consume(pb.ConsumeRequest(account_id="acme", amount=10))
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=20))
    at_two = await client.get_balance(pb.GetBalanceRequest(account_id="acme", as_of_version=2))
    assert (at_two.balance.available, at_two.balance.version) == (90, 2)
    at_time = await client.get_balance(pb.GetBalanceRequest(account_id="acme", as_of_time=second.balance.update_time))
    assert (at_time.balance.available, at_time.balance.version) == (90, 2)
    error = await refused(client.get_balance(pb.GetBalanceRequest(account_id="acme", as_of_version=4)))
    assert (error.code, error.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "as_of_version")
    error = await refused(
        client.get_balance(pb.GetBalanceRequest(account_id="acme", as_of_time=ts(datetime(2001, 1, 1, tzinfo=UTC))))
    )
    assert error.reason == "ACCOUNT_NOT_FOUND"


async def test_list_transactions_filters_pages_and_opens_payment_references(
    client: CreditsClient, config: MeshConfig
) -> None:
    await purchase(client, "acme", 100, reference="pay-A")
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=1, reference="order-1"))
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=2, reference="order-2"))
    await purchase(client, "zed", 50, reference="pay-B")
    everything = await client.list_transactions(pb.ListTransactionsRequest())
    assert [(t.account_id, t.version) for t in everything.transactions] == [
        ("acme", 1),
        ("acme", 2),
        ("acme", 3),
        ("zed", 1),
    ]
    assert all(len(t.trace_id) == 32 and len(t.hash) == 32 for t in everything.transactions)
    consumes = await client.list_transactions(
        pb.ListTransactionsRequest(account_id="acme", types=[pb.TRANSACTION_TYPE_CONSUMED])
    )
    assert [t.amount for t in consumes.transactions] == [1, 2]
    by_payment = await client.list_transactions(pb.ListTransactionsRequest(reference="pay-B"))
    assert [(t.account_id, t.reference, t.amount) for t in by_payment.transactions] == [("zed", "pay-B", 50)]
    by_order = await client.list_transactions(pb.ListTransactionsRequest(reference="order-2"))
    assert [(t.account_id, t.version) for t in by_order.transactions] == [("acme", 3)]
    none_yet = await client.list_transactions(pb.ListTransactionsRequest(end_time=ts(datetime(2000, 1, 1, tzinfo=UTC))))
    assert list(none_yet.transactions) == []
    pages, token = [], ""
    while True:
        page = await client.list_transactions(pb.ListTransactionsRequest(page_size=3, page_token=token))
        pages.append([(t.account_id, t.version) for t in page.transactions])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[("acme", 1), ("acme", 2), ("acme", 3)], [("zed", 1)]]
    error = await refused(client.list_transactions(pb.ListTransactionsRequest(page_size=3, page_token="garbage")))
    assert error.metadata["field"] == "page_token"
    async with ledger_database(config) as database:
        bodies = [row[0] for row in await database.fetchall("SELECT body FROM event_store WHERE type = 'Purchased'")]
    assert bodies and not any("pay-A" in body or "pay-B" in body for body in bodies), "payment references leak"


async def test_usage_report_adds_consumes_and_commits_per_period(client: CreditsClient) -> None:
    await purchase(client, "acme", 1000)
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=10))
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=5))
    made = await client.reserve(pb.ReserveRequest(account_id="acme", amount=20))
    await client.commit_reservation(
        pb.CommitReservationRequest(account_id="acme", reservation_id=made.reservation.reservation_id, amount=15)
    )
    now = datetime.now(UTC)
    report = await client.get_usage_report(
        pb.GetUsageReportRequest(
            start_time=ts(now - timedelta(days=1)), end_time=ts(now + timedelta(days=1)), period=pb.USAGE_PERIOD_DAY
        )
    )
    assert {row.account_id for row in report.rows} == {"acme"}
    assert (sum(r.consumed for r in report.rows), sum(r.operations for r in report.rows)) == (30, 3)
    monthly = await client.get_usage_report(
        pb.GetUsageReportRequest(
            account_id="acme",
            start_time=ts(now - timedelta(days=1)),
            end_time=ts(now + timedelta(days=1)),
            period=pb.USAGE_PERIOD_MONTH,
        )
    )
    assert sum(r.consumed for r in monthly.rows) == 30
    assert all(r.period_start_time.ToDatetime(UTC).day == 1 for r in monthly.rows)


# -- thresholds and alerts ---------------------------------------------------------------------------


async def test_low_balance_alert_fires_once_per_crossing_and_resumes_from_a_token(client: CreditsClient) -> None:
    await purchase(client, "acme", 100)
    seen: list[pb.WatchAlertsResponse] = []

    async def watch(token: str, into: list[pb.WatchAlertsResponse]) -> None:
        async for item in client.watch_alerts(pb.WatchAlertsRequest(account_id="acme", resume_token=token)):
            into.append(item)

    watcher = asyncio.create_task(watch("", seen))
    await asyncio.sleep(0.5)  # the watch starts "from now"
    threshold = await client.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=50))
    assert not threshold.alert_fired
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=60))  # 40 < 50: alert
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=5))  # still below: no second alert
    await purchase(client, "acme", 100)  # 135: re-armed
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=100))  # 35: alert again
    try:
        for _ in range(100):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert [(s.alert.threshold, s.alert.available, s.alert.version) for s in seen] == [(50, 40, 4), (50, 35, 8)]
    assert all(len(s.alert.trace_id) == 32 for s in seen)
    resumed: list[pb.WatchAlertsResponse] = []
    follower = asyncio.create_task(watch(seen[0].resume_token, resumed))
    try:
        for _ in range(100):
            if resumed:
                break
            await asyncio.sleep(0.05)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    assert resumed[0].alert.version == 8
    alerts = await client.list_transactions(
        pb.ListTransactionsRequest(account_id="acme", types=[pb.TRANSACTION_TYPE_LOW_BALANCE_ALERTED])
    )
    assert [t.version for t in alerts.transactions] == [4, 8]
    error = await refused(client.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=10**16)))
    assert error.metadata["field"] == "threshold"


async def test_threshold_above_the_balance_fires_at_once(client: CreditsClient) -> None:
    await purchase(client, "acme", 10)
    answer = await client.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=50))
    assert answer.alert_fired
    assert (answer.balance.threshold, answer.event_version, answer.balance.version) == (50, 2, 3)


# -- concurrency ------------------------------------------------------------------------------------


async def attempt_all(attempts: int, callers: int, attempt: Callable[[int], Awaitable[None]]) -> Counter[str]:
    """Run `attempts` numbered attempts from `callers` concurrent callers; count results by ErrorInfo reason."""
    results: Counter[str] = Counter()
    numbers = iter(range(attempts))

    async def caller() -> None:
        for number in numbers:
            try:
                await attempt(number)
                results["ok"] += 1
            except ShieldxError as error:
                results[error.reason or error.code.name] += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return results


async def test_64_callers_on_one_account_consume_exactly_its_balance(client: CreditsClient) -> None:
    await purchase(client, "hot", 1000)

    async def consume(_: int) -> None:
        await client.consume(pb.ConsumeRequest(account_id="hot", amount=1, request_id=request_id()))

    results = await attempt_all(2000, 64, consume)
    assert results == Counter({"ok": 1000, "INSUFFICIENT_CREDITS": 1000})
    balance = await client.get_balance(pb.GetBalanceRequest(account_id="hot"))
    assert (balance.balance.available, balance.balance.held, balance.balance.version) == (0, 0, 1001)


async def test_64_callers_mixing_consumes_and_reservations_never_overspend(client: CreditsClient) -> None:
    await purchase(client, "hot", 1000)

    async def consume_or_reserve(number: int) -> None:
        if number % 2:
            await client.consume(pb.ConsumeRequest(account_id="hot", amount=1))
            return
        made = await client.reserve(pb.ReserveRequest(account_id="hot", amount=1))
        if number % 4 == 0:
            await client.commit_reservation(
                pb.CommitReservationRequest(account_id="hot", reservation_id=made.reservation.reservation_id)
            )

    results = await attempt_all(2000, 64, consume_or_reserve)
    assert results == Counter({"ok": 1000, "INSUFFICIENT_CREDITS": 1000})
    balance = (await client.get_balance(pb.GetBalanceRequest(account_id="hot"))).balance
    open_ones = await client.list_reservations(
        pb.ListReservationsRequest(account_id="hot", states=[pb.RESERVATION_STATE_OPEN], page_size=1000)
    )
    assert balance.available == 0
    assert balance.held == len(open_ones.reservations) > 0
    assert balance.total == balance.held


# -- idempotency ------------------------------------------------------------------------------------


async def test_each_mutation_retried_with_its_request_id_returns_the_first_answer_also_after_a_restart(
    start_service: StartService, config: MeshConfig
) -> None:
    running = await start_service(build, config)
    client = CreditsClient(running.channel)
    first: list[tuple[Any, Any, Any]] = []

    async def once(name: str, request: Any) -> Any:
        answer = await getattr(client, name)(request)
        first.append((name, request, answer))
        return answer

    await once("purchase", pb.PurchaseRequest(account_id="acme", amount=100, payment_reference="p", request_id="r1"))
    await once("purchase", pb.PurchaseRequest(account_id="bob", amount=1, payment_reference="q", request_id="r2"))
    await once("consume", pb.ConsumeRequest(account_id="acme", amount=7, request_id="r3"))
    held = await once("reserve", pb.ReserveRequest(account_id="acme", amount=10, request_id="r4"))
    await once(
        "commit_reservation",
        pb.CommitReservationRequest(
            account_id="acme", reservation_id=held.reservation.reservation_id, amount=4, request_id="r5"
        ),
    )
    other = await once("reserve", pb.ReserveRequest(account_id="acme", amount=3, request_id="r6"))
    await once(
        "cancel_reservation",
        pb.CancelReservationRequest(
            account_id="acme", reservation_id=other.reservation.reservation_id, request_id="r7"
        ),
    )
    await once("transfer", pb.TransferRequest(from_account_id="acme", to_account_id="bob", amount=5, request_id="r8"))
    await once("set_threshold", pb.SetThresholdRequest(account_id="acme", threshold=500, request_id="r9"))
    refusal = await refused(client.consume(pb.ConsumeRequest(account_id="acme", amount=10**6, request_id="r10")))
    assert refusal.reason == "INSUFFICIENT_CREDITS"
    before = await client.list_transactions(pb.ListTransactionsRequest(page_size=1000))

    async def retry_everything(client: CreditsClient) -> None:
        for name, request, answer in first:
            assert await getattr(client, name)(request) == answer, name
        again = await refused(client.consume(pb.ConsumeRequest(account_id="acme", amount=10**6, request_id="r10")))
        assert (again.reason, again.metadata["available"]) == ("INSUFFICIENT_CREDITS", refusal.metadata["available"])
        after = await client.list_transactions(pb.ListTransactionsRequest(page_size=1000))
        assert after == before

    await retry_everything(client)
    await purchase(client, "acme", 1000)  # the refused request stays refused though it would pass now
    before = await client.list_transactions(pb.ListTransactionsRequest(page_size=1000))
    await stop_service(running)
    restarted = await start_service(build, config)
    await retry_everything(CreditsClient(restarted.channel))
    reused = await refused(
        CreditsClient(restarted.channel).consume(pb.ConsumeRequest(account_id="acme", amount=8, request_id="r3"))
    )
    assert (reused.code, reused.reason) == (FAILED_PRECONDITION, "REQUEST_ID_REUSED")


async def test_a_retry_while_the_first_attempt_runs_is_aborted(client: CreditsClient) -> None:
    await purchase(client, "acme", 100)
    aborted: list[ShieldxError] = []
    # A round whose first attempt finishes before any duplicate arrives proves nothing; a few
    # rounds make sure duplicates meet a running first attempt without guessing at timing.
    for applied in range(1, 6):
        request = pb.ConsumeRequest(account_id="acme", amount=1, request_id=f"slow-{applied}")
        results = await asyncio.gather(*(client.consume(request) for _ in range(20)), return_exceptions=True)
        refusals = [r for r in results if isinstance(r, BaseException)]
        answers = [r for r in results if not isinstance(r, BaseException)]
        assert all(isinstance(r, ShieldxError) for r in refusals), refusals
        assert answers and all(answer == answers[0] for answer in answers)
        assert [(e.code, e.reason) for e in refusals] == [(grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS")] * len(
            refusals
        )
        aborted += refusals  # type: ignore[arg-type]
        balance = await client.get_balance(pb.GetBalanceRequest(account_id="acme"))
        assert balance.balance.available == 100 - applied  # exactly one of the twenty applied
        if aborted:
            break
    assert aborted, "no duplicate ever met its first attempt in flight: REQUEST_IN_PROGRESS never seen"


# -- the store's own guarantees ---------------------------------------------------------------------------


async def test_the_event_store_refuses_update_and_delete_and_the_read_model_a_negative_balance(
    client: CreditsClient, config: MeshConfig
) -> None:
    await purchase(client, "acme", 100)
    async with ledger_database(config) as database:
        with pytest.raises(CheckViolation):
            await database.execute("UPDATE event_store SET body = '{}' WHERE account_id = 'acme'")
        with pytest.raises(CheckViolation):
            await database.execute("DELETE FROM event_store WHERE account_id = 'acme'")
        with pytest.raises(CheckViolation):
            await database.execute("UPDATE credit_balances_read_model SET available = -1 WHERE account_id = 'acme'")
        [count] = await database.fetchone("SELECT COUNT(*) FROM event_store")  # type: ignore[misc]
    assert count == 1


@contextlib.asynccontextmanager
async def triggers_off(database: Database) -> AsyncIterator[None]:
    """Lift the append-only guard for a moment, as an attacker with database access could."""
    if database.dialect == "postgres":
        await database.execute("ALTER TABLE event_store DISABLE TRIGGER event_store_append_only")
        try:
            yield
        finally:
            await database.execute("ALTER TABLE event_store ENABLE TRIGGER event_store_append_only")
        return
    await database.execute("DROP TRIGGER event_store_no_update")
    try:
        yield
    finally:
        await database.execute(
            "CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store"
            " BEGIN SELECT RAISE(ABORT, 'event_store is append-only: UPDATE refused'); END"
        )


async def test_changing_a_stored_event_makes_verification_fail_naming_that_event(
    client: CreditsClient, config: MeshConfig
) -> None:
    await purchase(client, "acme", 100)
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=10))
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=20))
    await purchase(client, "bob", 5)
    healthy = await client.verify_audit_chain(pb.VerifyAuditChainRequest())
    assert (healthy.ok, healthy.events_checked, healthy.accounts_checked) == (True, 4, 2)
    async with ledger_database(config) as database, triggers_off(database):
        changed = await database.execute(
            "UPDATE event_store SET body = replace(body, '\"amount\":10', '\"amount\":1')"
            " WHERE account_id = 'acme' AND version = 2"
        )
        assert changed == 1
    for scope in ("", "acme"):
        broken = await client.verify_audit_chain(pb.VerifyAuditChainRequest(account_id=scope))
        assert not broken.ok
        assert (broken.first_mismatch.account_id, broken.first_mismatch.version) == ("acme", 2)
        assert broken.first_mismatch.kind == pb.AUDIT_MISMATCH_KIND_HASH
        assert broken.first_mismatch.expected_hash != broken.first_mismatch.stored_hash
    still_fine = await client.verify_audit_chain(pb.VerifyAuditChainRequest(account_id="bob"))
    assert still_fine.ok


async def test_audit_head_is_signed_with_the_key_sealed_in_the_database(
    client: CreditsClient, config: MeshConfig
) -> None:
    await purchase(client, "acme", 100)
    await purchase(client, "bob", 5)
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=1))
    for _ in range(100):  # the head is signed periodically
        head = await client.get_audit_head(pb.GetAuditHeadRequest())
        if head.event_count == 3:
            break
        await asyncio.sleep(0.05)
    assert (head.account_count, head.event_count) == (2, 3)
    signed = LedgerHead(head.digest, head.account_count, head.event_count, head.sign_time.ToDatetime(UTC))
    nacl.signing.VerifyKey(head.public_key).verify(head_signing_bytes(signed), head.signature)
    async with ledger_database(config) as database:
        names = [row["name"] for row in await database.fetchall("SELECT name FROM sealed_secrets ORDER BY name")]
    assert names == ["credits/head-signing-seed", "credits/payment-reference-key"]
    assert not (Path(config.data_dir) / "credits-head-signing.key").exists(), "no key file beside the data"
    assert (Path(config.data_dir) / "kek").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("store_config", ["postgres"], indirect=True)
async def test_two_credits_servers_on_one_database_share_the_payment_reference_key(
    start_service: StartService, config: MeshConfig, tmp_path: Path
) -> None:
    kek = base64.b64encode(os.urandom(32)).decode()
    config.secrets.kek = kek
    first = CreditsClient((await start_service(build, config)).channel)
    other = credits_config(
        tmp_path / "other", {"database_url": config.database_url, "database_schema": config.database_schema}
    )
    other.secrets.kek = kek
    second = CreditsClient((await start_service(build, other)).channel)
    await purchase(first, "acme", 100, reference="pay-shared")
    found = await second.list_transactions(pb.ListTransactionsRequest(reference="pay-shared"))
    assert [(t.account_id, t.reference) for t in found.transactions] == [("acme", "pay-shared")], (
        "a reference sealed by one replica opens, and is found, on the other"
    )
    await purchase(second, "bob", 5, reference="pay-other")
    opened = await first.list_transactions(pb.ListTransactionsRequest(account_id="bob"))
    assert [t.reference for t in opened.transactions] == ["pay-other"]
    first_head = await first.get_audit_head(pb.GetAuditHeadRequest())
    second_head = await second.get_audit_head(pb.GetAuditHeadRequest())
    assert first_head.public_key == second_head.public_key, "one head signing key for the ledger"


# -- snapshots, rebuild ---------------------------------------------------------------------------------


async def ledger_activity(client: CreditsClient) -> None:
    """Some of everything: purchases, consumes, reservations committed, cancelled and expired, transfers, alerts."""
    await purchase(client, "acme", 500)
    await purchase(client, "bob", 50)
    await client.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=450))
    for amount in (5, 10, 20):
        await client.consume(pb.ConsumeRequest(account_id="acme", amount=amount, reference=f"o-{amount}"))
    kept = await client.reserve(pb.ReserveRequest(account_id="acme", amount=40))
    await client.commit_reservation(
        pb.CommitReservationRequest(account_id="acme", reservation_id=kept.reservation.reservation_id, amount=30)
    )
    dropped = await client.reserve(pb.ReserveRequest(account_id="bob", amount=10))
    await client.cancel_reservation(
        pb.CancelReservationRequest(account_id="bob", reservation_id=dropped.reservation.reservation_id)
    )
    await client.reserve(pb.ReserveRequest(account_id="bob", amount=5, ttl=duration_pb2.Duration(nanos=100_000_000)))
    await client.reserve(pb.ReserveRequest(account_id="acme", amount=7))
    await client.transfer(pb.TransferRequest(from_account_id="acme", to_account_id="bob", amount=25))
    for _ in range(100):
        expired = await client.list_reservations(pb.ListReservationsRequest(states=[pb.RESERVATION_STATE_EXPIRED]))
        released = await client.list_transactions(
            pb.ListTransactionsRequest(types=[pb.TRANSACTION_TYPE_RESERVATION_EXPIRED])
        )
        if expired.reservations and released.transactions:
            break
        await asyncio.sleep(0.05)


async def read_models(database: Database) -> tuple[Any, ...]:
    projection = Projection(database.dialect)
    async with database.transaction() as tx:
        return (
            await projection.balances(tx),
            await projection.all_reservations(tx),
            await projection.checkpoints(tx),
        )


async def test_rebuild_reproduces_the_read_models_exactly(client: CreditsClient, config: MeshConfig) -> None:
    await ledger_activity(client)
    async with ledger_database(config) as database:
        live = await read_models(database)
        assert live[0] and live[1] and live[2]
        await database.execute("DELETE FROM credit_balances_read_model WHERE account_id = 'bob'")
        await database.execute("UPDATE credit_balances_read_model SET available = 1 WHERE account_id = 'acme'")
        await database.execute("DELETE FROM credit_reservations_read_model")
        progress: list[tuple[int, int]] = []
        report = await rebuild(database, progress=lambda done, total: progress.append((done, total)), batch=4)
        assert await read_models(database) == live
        async with database.transaction() as tx:
            assert await Projection(database.dialect).lag(tx) == 0
    assert report.events == progress[-1][0] == progress[-1][1]
    assert report.accounts == 2
    assert len(progress) > 2, "the progress callback is called per batch"
    balance = await client.get_balance(pb.GetBalanceRequest(account_id="acme"))
    assert balance.balance.available == live[0][0].available


async def test_rebuild_command_prints_a_progress_bar(client: CreditsClient, config: MeshConfig, tmp_path: Path) -> None:
    await ledger_activity(client)
    env = {
        **os.environ,
        "SHIELDX_DATA_DIR": config.data_dir,
        "SHIELDX_DATABASE_URL": config.database_url,
        "SHIELDX_DATABASE_SCHEMA": config.database_schema,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")]),
    }
    done = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "servers.credits.rebuild",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    assert "100%" in err.decode() and "events" in err.decode()
    assert "rebuilt the credits read models" in out.decode()


async def test_snapshots_are_taken_every_n_events_and_used_after_a_restart(
    start_service: StartService, tmp_path: Path, store_config: dict[str, str]
) -> None:
    config = credits_config(tmp_path, store_config, snapshot_every=5)
    running = await start_service(build, config)
    client = CreditsClient(running.channel)
    await purchase(client, "acme", 100)
    for _ in range(11):
        await client.consume(pb.ConsumeRequest(account_id="acme", amount=1))
    async with ledger_database(config) as database:
        versions = [row[0] for row in await database.fetchall("SELECT version FROM snapshots ORDER BY version")]
    assert versions == [5, 10]
    await stop_service(running)
    client = CreditsClient((await start_service(build, config)).channel)
    spent = await client.consume(pb.ConsumeRequest(account_id="acme", amount=1))
    assert (spent.balance.available, spent.event_version) == (88, 13)
    past = await client.get_balance(pb.GetBalanceRequest(account_id="acme", as_of_version=7))
    assert (past.balance.available, past.balance.version) == (94, 7)


# -- the service as a whole -----------------------------------------------------------------------------


async def test_fuzzed_requests_never_crash_the_service_and_most_reach_the_ledger(
    running: Running, client: CreditsClient
) -> None:
    await purchase(client, "acme", 10**9)
    await purchase(client, "bob", 10)
    held = await client.reserve(pb.ReserveRequest(account_id="acme", amount=1, request_id=request_id()))
    values = {
        "account_id": "acme",
        "from_account_id": "acme",
        "to_account_id": "bob",
        "amount": 1,
        "reservation_id": held.reservation.reservation_id,
        "expire_time": ts(datetime.now(UTC) + timedelta(hours=1)),
        "threshold": 10**9,
    }

    async def keep_crossing_the_threshold() -> None:
        # Alerts keep coming while the harness runs, so a valid watch (which starts "from now")
        # has something to stream instead of waiting out its deadline. (Fuzzed SetThreshold
        # calls move the threshold too, so it is set again each time.)
        while True:
            await client.set_threshold(pb.SetThresholdRequest(account_id="acme", threshold=10**9))
            available = (await client.get_balance(pb.GetBalanceRequest(account_id="acme"))).balance.available
            if available <= 10**9:
                await purchase(client, "acme", 10**9 - available + 50)
            await client.consume(pb.ConsumeRequest(account_id="acme", amount=100))
            await asyncio.sleep(0.05)

    activity = asyncio.create_task(keep_crossing_the_threshold())
    try:
        report = await fuzz_service(running.channel, pb.DESCRIPTOR.services_by_name["CreditsService"], values=values)
    finally:
        activity.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await activity
    report.assert_clean()
    report.assert_reaches_logic()


async def test_a_token_without_credits_write_cannot_consume(
    start_service: StartService, tmp_path: Path, store_config: dict[str, str]
) -> None:
    authority = TestAuthority()
    config = credits_config(tmp_path, store_config)
    config.auth.enabled = True
    running = await start_service(build, config, verifier=authority.verifier)
    client = CreditsClient(running.channel)
    request = pb.ConsumeRequest(account_id="acme", amount=1)
    denied = await refused(client.consume(request, metadata=authority.metadata(["credits.read"])))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    allowed = await refused(client.consume(request, metadata=authority.metadata(["credits.write"])))
    assert allowed.reason == "ACCOUNT_NOT_FOUND", "with the scope the call reaches the ledger"


async def test_operations_are_counted_and_the_projection_lag_measured(client: CreditsClient, running: Running) -> None:
    await purchase(client, "acme", 10)
    await client.consume(pb.ConsumeRequest(account_id="acme", amount=4))
    await refused(client.consume(pb.ConsumeRequest(account_id="acme", amount=40)))
    registry = running.runtime.registry
    count = registry.get_sample_value
    assert count("shieldx_credits_operations_total", {"op": "consume", "result": "ok"}) == 1
    assert count("shieldx_credits_operations_total", {"op": "consume", "result": "INSUFFICIENT_CREDITS"}) == 1
    assert count("shieldx_credits_operation_duration_seconds_count", {"op": "purchase"}) == 1
    for _ in range(100):
        if count("shieldx_credits_projection_lag_events") == 0 and count(
            "shieldx_credits_operations_total", {"op": "purchase", "result": "ok"}
        ):
            break
        await asyncio.sleep(0.05)
    assert count("shieldx_credits_projection_lag_events") == 0


async def test_two_servers_on_one_store_never_overspend_an_account(
    start_service: StartService, config: MeshConfig
) -> None:
    first = CreditsClient((await start_service(build, config)).channel)
    second = CreditsClient((await start_service(build, config)).channel)
    await purchase(first, "shared", 300)
    await second.get_balance(pb.GetBalanceRequest(account_id="shared"))

    async def consume(number: int) -> None:
        client = first if number % 2 else second
        await client.consume(pb.ConsumeRequest(account_id="shared", amount=1, request_id=request_id()))

    results = await attempt_all(600, 32, consume)
    assert results == Counter({"ok": 300, "INSUFFICIENT_CREDITS": 300})
    balance = await second.get_balance(pb.GetBalanceRequest(account_id="shared"))
    assert (balance.balance.available, balance.balance.version) == (0, 301)
    assert (await first.verify_audit_chain(pb.VerifyAuditChainRequest())).ok
