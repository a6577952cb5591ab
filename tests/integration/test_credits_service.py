"""The credits ledger service on both backends: every RPC, its refusals, concurrency, idempotency, audit."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from clients.credits import CreditsClient
from clients.errors import ShieldxError
from servers.credits.service import build
from servers.mesh.config import MeshConfig
from servers.mesh.storage import Database, open_database
from shieldx.credits.v1 import credits_pb2 as pb
from tests.conftest import Running, StartService, test_config

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def credits_config(tmp_path: Path, store_config: dict[str, str], **settings: Any) -> MeshConfig:
    """A credits server config on the given store, with fast background loops."""
    config = test_config(tmp_path, service="credits", **store_config)
    config.settings = {"sweep_interval_seconds": 0.05, "alert_poll_seconds": 0.05, **settings}
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
            lambda c: c.reserve(pb.ReserveRequest(account_id="acme", amount=1, ttl=duration_pb2.Duration(seconds=-1))),
            "ttl",
        ),
        (
            lambda c: c.transfer(pb.TransferRequest(from_account_id="acme", to_account_id="acme", amount=1)),
            "to_account_id",
        ),
        (lambda c: c.list_transactions(pb.ListTransactionsRequest(page_size=-1)), "page_size"),
        (lambda c: c.list_transactions(pb.ListTransactionsRequest(types=[0])), "types"),
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
