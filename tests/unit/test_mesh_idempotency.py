"""AIP-155 request ids on both backends: first answer replayed, reuse refused, in-flight retry aborted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from google.rpc import error_details_pb2, status_pb2

from servers.mesh import errors, storage
from servers.mesh.idempotency import InFlightRequests, RecordedAnswer, RequestLedger, fingerprint, is_recorded
from servers.mesh.status import ReplayedRejection
from servers.mesh.storage import Database, open_database
from tests.support.echo import echo_pb2

Request = echo_pb2.EchoRequest
Response = echo_pb2.EchoResponse


@pytest.fixture
async def database(store_config: dict[str, str]) -> AsyncIterator[Database]:
    db = await open_database(
        "ledgertest",
        data_dir=store_config["data_dir"],
        database_url=store_config["database_url"],
        schema=store_config.get("database_schema"),
        migrations=["servers.mesh.migrations", "tests.support.migrations"],
    )
    yield db
    await db.close()


def deposit(amount: int) -> Callable[[storage.Transaction], Awaitable[Any]]:
    async def work(tx: storage.Transaction) -> Response:
        await tx.execute(
            "INSERT INTO accounts (id, balance) VALUES ('a', ?)"
            " ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + ?",
            (amount, amount),
        )
        balance = await tx.fetchval("SELECT balance FROM accounts WHERE id = 'a'")
        return Response(text=str(balance))

    return work


async def balance(database: Database) -> int:
    row = await database.fetchone("SELECT balance FROM accounts WHERE id = 'a'")
    return int(row["balance"])


async def test_retry_returns_the_first_answer_and_changes_nothing(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    request = Request(text="deposit 5", request_id="r-1")
    first = await ledger.execute("Deposit", request, Response, deposit(5))
    again = await ledger.execute("Deposit", request, Response, deposit(5))
    restarted = await RequestLedger(database, "test").execute("Deposit", request, Response, deposit(5))
    assert first == again == restarted == Response(text="5")
    assert await balance(database) == 5


async def test_same_id_for_a_different_request_is_refused(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    await ledger.execute("Deposit", Request(text="deposit 5", request_id="r-1"), Response, deposit(5))
    with pytest.raises(errors.FailedPrecondition) as caught:
        await ledger.execute("Deposit", Request(text="deposit 6", request_id="r-1"), Response, deposit(6))
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert await balance(database) == 5


async def test_business_rejection_is_replayed(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    calls = 0

    async def refuse(tx: storage.Transaction) -> Response:
        nonlocal calls
        calls += 1
        raise errors.FailedPrecondition("no credits", reason="INSUFFICIENT_CREDITS")

    request = Request(text="spend", request_id="r-2")
    with pytest.raises(errors.FailedPrecondition):
        await ledger.execute("Spend", request, Response, refuse)
    with pytest.raises(ReplayedRejection):
        await ledger.execute("Spend", request, Response, refuse)
    assert calls == 1, "the retry is answered from the record, not re-run"


async def test_retry_while_first_attempt_runs_is_aborted(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(tx: storage.Transaction) -> Response:
        started.set()
        await release.wait()
        return Response(text="done")

    first = asyncio.create_task(ledger.execute("Slow", Request(request_id="r-3"), Response, slow))
    await started.wait()
    with pytest.raises(errors.Conflict) as caught:
        await ledger.execute("Slow", Request(request_id="r-3"), Response, slow)
    assert caught.value.reason == "REQUEST_IN_PROGRESS"
    release.set()
    assert (await first).text == "done"


async def test_write_conflicts_are_retried(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    attempts = 0

    async def flaky(tx: storage.Transaction) -> Response:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise storage.UniqueViolation("someone else took version 7")
        return Response(text="ok")

    assert (await ledger.execute("Flaky", Request(), Response, flaky)).text == "ok"
    assert attempts == 3


@pytest.mark.parametrize("request_id", ["x" * 129, "tab\there", "é"])
async def test_malformed_request_id_names_the_field(database: Database, request_id: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        await RequestLedger(database, "test").execute("Deposit", Request(request_id=request_id), Response, deposit(1))
    assert caught.value.violations[0].field == "request_id"


async def test_answers_recorded_in_a_batch_are_replayed_like_their_own(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    paid = Request(text="deposit 5", request_id="b-1")
    refused = Request(text="spend 9", request_id="b-2")
    scope = ledger.scope()
    async with database.transaction() as tx:
        await deposit(5)(tx)
        await ledger.record(
            tx,
            [
                RecordedAnswer.ok("b-1", "Deposit", fingerprint("Deposit", paid), Response(text="5"), scope=scope),
                RecordedAnswer.rejected(
                    "b-2",
                    "Spend",
                    fingerprint("Spend", refused),
                    errors.FailedPrecondition("no credits", reason="INSUFFICIENT_CREDITS"),
                    "test",
                    scope=scope,
                ),
            ],
        )
    restarted = RequestLedger(database, "test")
    assert await restarted.execute("Deposit", paid, Response, deposit(5)) == Response(text="5")
    with pytest.raises(ReplayedRejection) as caught:
        await restarted.execute("Spend", refused, Response, deposit(9))
    info = error_details_pb2.ErrorInfo()
    assert status_pb2.Status.FromString(caught.value.status).details[0].Unpack(info)
    assert info.reason == "INSUFFICIENT_CREDITS"
    with pytest.raises(errors.FailedPrecondition) as reused:
        await restarted.execute("Deposit", Request(text="deposit 6", request_id="b-1"), Response, deposit(6))
    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert await balance(database) == 5, "replayed answers run no work"


async def test_recording_an_answered_id_again_writes_nothing(database: Database) -> None:
    ledger = RequestLedger(database, "test")
    request = Request(text="deposit 5", request_id="b-3")
    await ledger.execute("Deposit", request, Response, deposit(5))
    with pytest.raises(storage.UniqueViolation):
        async with database.transaction() as tx:
            await deposit(5)(tx)
            answers = [
                RecordedAnswer.ok(
                    f"b-{i}", "Deposit", fingerprint("Deposit", request), Response(text="10"), scope=ledger.scope()
                )
                for i in (4, 3)
            ]
            await ledger.record(tx, answers)
    assert await balance(database) == 5
    assert await database.fetchone("SELECT 1 FROM request_ids WHERE request_id = 'b-4'") is None


async def test_services_sharing_a_store_never_refuse_each_others_request_ids(database: Database) -> None:
    """Six services on one PostgreSQL schema share one request_ids table: ids are scoped per service."""
    tokens, credits = RequestLedger(database, "shieldx.tokens.v1"), RequestLedger(database, "shieldx.credits.v1")
    revoked = await tokens.execute("RevokeToken", Request(text="revoke j1", request_id="same"), Response, deposit(1))
    consumed = await credits.execute("Consume", Request(text="consume 5", request_id="same"), Response, deposit(5))
    assert (revoked, consumed) == (Response(text="1"), Response(text="6")), "both ran"
    again = await credits.execute("Consume", Request(text="consume 5", request_id="same"), Response, deposit(5))
    assert again == consumed and await balance(database) == 6
    assert await tokens.purge(-60) == 1, "a service forgets only its own request ids"
    assert await credits.execute("Consume", Request(text="consume 5", request_id="same"), Response, deposit(5)) == again


def test_only_state_dependent_rejections_are_recorded() -> None:
    assert is_recorded(errors.FailedPrecondition("no", reason="X"))
    assert is_recorded(errors.NotFound("account", "a"))
    assert not is_recorded(errors.InvalidArgument("amount", "must be positive"))
    assert not is_recorded(errors.Unavailable("later"))


def test_an_in_flight_request_id_is_refused_until_its_holder_ends_even_by_an_error() -> None:
    in_flight = InFlightRequests()
    with in_flight.claim("r-9", "svc alice"):
        assert ("svc alice", "r-9") in in_flight
        with pytest.raises(errors.Conflict) as caught, in_flight.claim("r-9", "svc alice"):
            pass
        assert caught.value.reason == "REQUEST_IN_PROGRESS"
        with in_flight.claim("r-9", "svc bob"):
            pass  # another caller's id of the same text is another request
        with in_flight.claim("", "svc alice"), in_flight.claim("", "svc alice"):
            pass  # no request id: nothing to hold
    with pytest.raises(RuntimeError), in_flight.claim("r-9", "svc alice"):
        raise RuntimeError("the work failed")
    assert ("svc alice", "r-9") not in in_flight
    with pytest.raises(errors.InvalidArgument), in_flight.claim("x" * 1000, "svc alice"):
        pass
