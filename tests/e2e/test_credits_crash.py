"""Crash test: a real credits process on PostgreSQL, SIGKILLed twice under load, loses nothing it acknowledged.

Callers send purchases and consumes with request ids while the process is killed with SIGKILL
and restarted, twice. Afterwards every acknowledged operation is in the event store exactly
once (found by its request id), every acknowledged refusal left nothing, the calls that got no
answer apply at most once when retried with their ids, the balances equal a full replay of
the events, and the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from clients.credits import CreditsClient
from clients.errors import ShieldxError
from servers.credits.account import AccountState
from servers.credits.events import decode_event
from shieldx.credits.v1 import credits_pb2 as pb
from tests.conftest import POSTGRES_URL
from tests.support.processes import ServerProcess

ACCOUNTS = [f"acct-{i}" for i in range(6)]
PRIMARY = ("Purchased", "Consumed")
# Answers that settle a call: applied (OK) or refused and recorded (the refusal is the answer).
SETTLED_REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}


@dataclass
class Call:
    """One mutating call of the load and what became of it."""

    request_id: str
    request: pb.PurchaseRequest | pb.ConsumeRequest
    outcome: str = "pending"
    """`applied`, `refused` or `unknown` (no answer: the process died, or the call timed out)."""
    event_version: int = 0


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"crash_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def make_call(rng: random.Random) -> Call:
    account = rng.choice(ACCOUNTS)
    request_id = uuid.uuid4().hex
    request: pb.PurchaseRequest | pb.ConsumeRequest
    if rng.random() < 0.3:
        request = pb.PurchaseRequest(
            account_id=account,
            amount=rng.randint(1, 40),
            payment_reference=f"pay-{request_id[:8]}",
            request_id=request_id,
        )
    else:
        request = pb.ConsumeRequest(account_id=account, amount=rng.randint(1, 15), request_id=request_id)
    return Call(request_id, request)


async def send(client: CreditsClient, call: Call) -> None:
    try:
        if isinstance(call.request, pb.PurchaseRequest):
            answer: pb.PurchaseResponse | pb.ConsumeResponse = await client.purchase(call.request)
        else:
            answer = await client.consume(call.request)
    except ShieldxError as error:
        call.outcome = "refused" if error.code in SETTLED_REFUSALS else "unknown"
        return
    call.outcome, call.event_version = "applied", answer.event_version


async def load(client: CreditsClient, calls: list[Call], stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        call = make_call(rng)
        calls.append(call)
        await send(client, call)
        if call.outcome == "unknown":
            await asyncio.sleep(0.05)


async def restart_after_kill(server: ServerProcess) -> None:
    server.signal(signal.SIGKILL)
    assert await asyncio.to_thread(server.wait) == -signal.SIGKILL
    await asyncio.to_thread(server.start)


def stored_events(schema: str) -> list[tuple[str, int, str, str, object, str, str]]:
    with psycopg.connect(POSTGRES_URL, options=f"-c search_path={schema}") as connection:
        return connection.execute(
            "SELECT account_id, version, type, body, occurred_at, trace_id, request_id FROM event_store"
            " ORDER BY account_id, version"
        ).fetchall()


def read_model(schema: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(POSTGRES_URL, options=f"-c search_path={schema}") as connection:
        rows = connection.execute("SELECT account_id, available, held, version FROM credit_balances_read_model")
        return {account: (available, held, version) for account, available, held, version in rows}


async def test_sigkill_under_load_loses_no_acknowledged_operation(tmp_path: Path, schema: str) -> None:
    server = ServerProcess(
        "servers.credits",
        tmp_path,
        env={"SHIELDX_DATABASE_URL": POSTGRES_URL, "SHIELDX_DATABASE_SCHEMA": schema, "SHIELDX_LOG_LEVEL": "WARNING"},
    )
    await asyncio.to_thread(server.start)
    channel = grpc.aio.insecure_channel(
        server.address,
        options=[("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 300)],
    )
    client = CreditsClient(channel, default_timeout=3.0)
    calls: list[Call] = []
    try:
        for account in ACCOUNTS:
            call = Call(uuid.uuid4().hex, pb.PurchaseRequest(account_id=account, amount=200, payment_reference="seed"))
            call.request.request_id = call.request_id
            calls.append(call)
            await send(client, call)
            assert call.outcome == "applied"
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(client, calls, stop, seed)) for seed in range(16)]
        for pause in (1.5, 1.5):
            await asyncio.sleep(pause)
            await restart_after_kill(server)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)

        unknown = [call for call in calls if call.outcome == "unknown"]
        for call in unknown:  # the same request ids again: at most once
            for _ in range(20):
                await send(client, call)
                if call.outcome != "unknown":
                    break
                await asyncio.sleep(0.1)
        verified = await client.verify_audit_chain(pb.VerifyAuditChainRequest())
    finally:
        await channel.close()
        server.stop()

    applied = [call for call in calls if call.outcome == "applied"]
    assert len(applied) > 100, f"the load made too little progress: {len(applied)} applied"
    assert unknown, "the kills left calls without an answer (the retry path was exercised)"
    assert all(call.outcome != "unknown" for call in calls), "every retried call got a definite answer"
    events = stored_events(schema)
    primary: dict[str, list[tuple[str, int, str]]] = {}
    for account, version, type_name, _, _, _, request_id in events:
        if type_name in PRIMARY and request_id:
            primary.setdefault(request_id, []).append((account, version, type_name))
    for call in calls:
        found = primary.get(call.request_id, [])
        if call.outcome == "applied":
            assert len(found) == 1, f"{call.request_id}: acknowledged, found {len(found)} times"
            assert found[0][:2] == (call.request.account_id, call.event_version)
        else:
            assert found == [], f"{call.request_id}: refused, yet recorded"
    assert len(primary) == len(applied)

    replayed: dict[str, AccountState] = {}
    for account, version, type_name, body, occurred_at, trace_id, _ in events:
        state = replayed.setdefault(account, AccountState(account))
        state.apply(decode_event(account, version, type_name, body, occurred_at, trace_id))  # type: ignore[arg-type]
    assert read_model(schema) == {a: (s.available, s.held, s.version) for a, s in replayed.items()}
    assert verified.ok and verified.events_checked == len(events)
    assert "Traceback" not in server.logs()
