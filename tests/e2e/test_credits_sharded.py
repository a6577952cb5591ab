"""Credits on two (then three) PostgreSQL shards, end to end: real clusters, a sharding server, credits servers.

- Cross-shard transfers under concurrency (two-phase commit) keep the total of all balances.
- A coordinator killed with SIGKILL between PREPARE and COMMIT PREPARED (held there by the
  documented test-only crash point `credits.two_phase_crash_point`) loses or creates nothing:
  once restarted, recovery finishes every in-doubt transaction the same way on both shards
  (abort with no decision logged, commit with one), no prepared transaction is left, and the
  gauge `shieldx_credits_prepared_transactions_unresolved` returns to 0.
- Adding a third shard under a load of consumes and purchases rebalances through the credits
  mover: every acknowledged operation is present exactly once, every balance is what the
  acknowledged operations make it, and every audit chain verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from clients.credits import CreditsClient
from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from shieldx.credits.v1 import credits_pb2 as cpb
from shieldx.sharding.v1 import sharding_pb2 as spb
from tests.support.pgcluster import PgShard, PgWorkspace, PostgresUnavailable
from tests.support.polling import wait_until
from tests.support.processes import ServerProcess
from tests.support.shardedmesh import (
    TWO_PHASE,
    accounts_by_shard,
    balances,
    credits_process,
    metric,
    prepared_transactions,
    rebalance,
    register,
    sharding_process,
    when_serving,
)

FUNDS = 1000
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}


@dataclass
class Mesh:
    """The module's clusters and server processes."""

    pg: PgWorkspace
    clusters: dict[str, PgShard]
    sharding: ServerProcess
    credits: ServerProcess
    tmp_path: Path

    @contextlib.asynccontextmanager
    async def clients(
        self, credits: ServerProcess | None = None
    ) -> AsyncIterator[tuple[CreditsClient, ShardingClient]]:
        credits_channel = grpc.aio.insecure_channel((credits or self.credits).address)
        sharding_channel = grpc.aio.insecure_channel(self.sharding.address)
        try:
            yield CreditsClient(credits_channel), ShardingClient(sharding_channel)
        finally:
            await credits_channel.close()
            await sharding_channel.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    try:
        pg = PgWorkspace()
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    tmp_path = tmp_path_factory.mktemp("sharded")
    sharding = sharding_process(tmp_path)
    credits = credits_process(tmp_path, sharding)
    with pg:
        clusters = {
            "shard-a": pg.shard("sa", replicas=0, settings=TWO_PHASE),
            "shard-b": pg.shard("sb", replicas=0, settings=TWO_PHASE),
        }
        try:
            sharding.start()
            asyncio.run(_two_active_shards(sharding, clusters))
            credits.start()
            yield Mesh(pg, clusters, sharding, credits, tmp_path)
        finally:
            credits.stop()
            sharding.stop()


async def _two_active_shards(sharding: ServerProcess, clusters: dict[str, PgShard]) -> None:
    channel = grpc.aio.insecure_channel(sharding.address)
    client = ShardingClient(channel)
    try:
        for shard_id, cluster in clusters.items():
            await register(client, shard_id, cluster)
        await rebalance(client)  # the second shard joins (nothing to move yet)
    finally:
        await channel.close()


async def fund(credits: CreditsClient, account_ids: list[str]) -> None:
    await when_serving(credits, account_ids[0])
    for account_id in account_ids:
        await credits.purchase(
            cpb.PurchaseRequest(
                account_id=account_id, amount=FUNDS, payment_reference="setup", request_id=f"fund-{account_id}"
            )
        )


async def test_cross_shard_transfers_under_concurrency_keep_the_total(mesh: Mesh) -> None:
    async with mesh.clients() as (credits, sharding):
        groups = await accounts_by_shard(sharding, 4, "conc")
        accounts = [a for ids in groups.values() for a in ids]
        shard_of = {a: shard for shard, ids in groups.items() for a in ids}
        await fund(credits, accounts)
        rng = random.Random(5)
        outcome: dict[str, int] = {"cross": 0, "same": 0, "refused": 0}

        async def worker(seed: int) -> None:
            local = random.Random(seed)
            for _ in range(25):
                source, target = local.sample(accounts, 2)
                request = cpb.TransferRequest(
                    from_account_id=source,
                    to_account_id=target,
                    amount=local.randint(1, 150),
                    request_id=uuid.uuid4().hex,
                )
                try:
                    await credits.transfer(request)
                except ShieldxError as error:
                    assert error.code == grpc.StatusCode.FAILED_PRECONDITION, error
                    outcome["refused"] += 1
                    continue
                outcome["cross" if shard_of[source] != shard_of[target] else "same"] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(rng.randrange(1 << 30)) for _ in range(16)))
        elapsed = time.monotonic() - started

        after = await balances(credits, accounts)
        assert sum(after.values()) == FUNDS * len(accounts), "no credit created or destroyed"
        assert outcome["cross"] > 50 and outcome["same"] > 10, outcome
        assert await asyncio.to_thread(prepared_transactions, list(mesh.clusters.values())) == 0
        chain = await credits.verify_audit_chain(cpb.VerifyAuditChainRequest())
        assert chain.ok and chain.accounts_checked >= len(accounts)

        # A retry of a cross-shard transfer replays its answer and moves nothing again.
        source, target = groups["shard-a"][0], groups["shard-b"][0]
        request = cpb.TransferRequest(from_account_id=source, to_account_id=target, amount=1, request_id="conc-retry")
        first = await credits.transfer(request)
        moved = await balances(credits, [source, target])
        assert await credits.transfer(request) == first
        assert await balances(credits, [source, target]) == moved
        reused = cpb.TransferRequest(from_account_id=source, to_account_id=target, amount=2, request_id="conc-retry")
        with pytest.raises(ShieldxError) as refused:
            await credits.transfer(reused)
        assert refused.value.reason == "REQUEST_ID_REUSED"
    print(
        f"\n400 concurrent transfers over 2 shards in {elapsed:.2f} s: {outcome['cross']} cross-shard (2PC),"
        f" {outcome['same']} same-shard, {outcome['refused']} refused INSUFFICIENT_CREDITS; total kept"
    )


async def test_one_watch_follows_the_alerts_of_every_shard_and_resumes(mesh: Mesh) -> None:
    async with mesh.clients() as (credits, sharding):
        groups = await accounts_by_shard(sharding, 1, "alert")
        accounts = [groups["shard-a"][0], groups["shard-b"][0]]
        await fund(credits, accounts)
        stream = credits.watch_alerts(cpb.WatchAlertsRequest())
        received: list[cpb.WatchAlertsResponse] = []

        async def first_two() -> None:
            async for response in stream:
                received.append(response)
                if len(received) == 2:
                    return

        watching = asyncio.create_task(first_two())
        await asyncio.sleep(0.3)  # the watch has taken its starting place on every shard
        for account_id in accounts:
            await credits.set_threshold(cpb.SetThresholdRequest(account_id=account_id, threshold=500))
            await credits.consume(cpb.ConsumeRequest(account_id=account_id, amount=600))
        await asyncio.wait_for(watching, 10)
        assert sorted(r.alert.account_id for r in received) == sorted(accounts), "alerts from both shards"
        resumed = credits.watch_alerts(cpb.WatchAlertsRequest(resume_token=received[0].resume_token))
        async for response in resumed:
            assert response.alert.account_id == received[1].alert.account_id, "resumes after the first alert"
            break


def decisions_logged(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'credits.db'}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM transfer_decisions WHERE decision = 'commit'").fetchone()[0])


@pytest.mark.parametrize("crash_point", ["after_prepare", "after_decision"])
async def test_a_coordinator_killed_between_prepare_and_commit_creates_and_destroys_nothing(
    mesh: Mesh, crash_point: str
) -> None:
    clusters = list(mesh.clusters.values())
    coordinator = credits_process(mesh.tmp_path, mesh.sharding, name=f"coordinator-{crash_point}")
    coordinator.env["SHIELDX_CREDITS__TWO_PHASE_CRASH_POINT"] = crash_point
    coordinator.start()
    try:
        async with mesh.clients(coordinator) as (credits, sharding):
            groups = await accounts_by_shard(sharding, 4, f"crash-{crash_point}")
            accounts = [a for ids in groups.values() for a in ids]
            await fund(credits, accounts)
            pairs = list(zip(groups["shard-a"], groups["shard-b"], strict=True))
            requests = [
                cpb.TransferRequest(from_account_id=a, to_account_id=b, amount=100 + i, request_id=f"{crash_point}-{i}")
                for i, (a, b) in enumerate(pairs)
            ]
            calls = [asyncio.create_task(credits.transfer(request, timeout=60)) for request in requests]
            await asyncio.to_thread(
                wait_until, lambda: prepared_transactions(clusters) == 2 * len(pairs), 20, "both halves prepared"
            )
            if crash_point == "after_decision":
                await asyncio.to_thread(
                    wait_until, lambda: decisions_logged(coordinator.data_dir) == len(pairs), 20, "commits logged"
                )
            coordinator.signal(signal.SIGKILL)
            assert await asyncio.to_thread(coordinator.wait) == -signal.SIGKILL
            for call in calls:
                with pytest.raises(ShieldxError):
                    await call
        assert await asyncio.to_thread(prepared_transactions, clusters) == 2 * len(pairs), "left in doubt by the crash"

        killed_at = time.monotonic()
        del coordinator.env["SHIELDX_CREDITS__TWO_PHASE_CRASH_POINT"]
        # Long enough that the restarted coordinator (slow to start on a loaded machine) still sees
        # the halves as in doubt for a while, so the gauge can be read before recovery finishes them.
        coordinator.env["SHIELDX_CREDITS__IN_DOUBT_AFTER_SECONDS"] = "15"
        await asyncio.to_thread(coordinator.start)
        seen_in_doubt = 0.0
        while True:
            gauge = metric(coordinator, "shieldx_credits_prepared_transactions_unresolved")
            left = await asyncio.to_thread(prepared_transactions, clusters)
            if gauge == 0.0 and left == 0:
                break
            seen_in_doubt = max(seen_in_doubt, gauge or 0.0)
            assert time.monotonic() - killed_at < 60, "recovery did not finish"
            await asyncio.sleep(0.1)
        recovered_after = time.monotonic() - killed_at
        assert seen_in_doubt == 2 * len(pairs), "the gauge showed the in-doubt halves before recovery"

        async with mesh.clients(coordinator) as (credits, _):
            after = await balances(credits, accounts)
            moved = crash_point == "after_decision"
            for i, (a, b) in enumerate(pairs):
                delta = 100 + i if moved else 0
                assert (after[a], after[b]) == (FUNDS - delta, FUNDS + delta), f"{a}->{b} resolved alike on both shards"
            assert sum(after.values()) == FUNDS * len(accounts)
            # Retried with their request ids: a committed transfer replays, an aborted one runs now.
            for request in requests:
                await credits.transfer(request)
            retried = await balances(credits, accounts)
            for i, (a, b) in enumerate(pairs):
                assert (retried[a], retried[b]) == (FUNDS - 100 - i, FUNDS + 100 + i)
            assert (await credits.verify_audit_chain(cpb.VerifyAuditChainRequest())).ok
        assert await asyncio.to_thread(prepared_transactions, clusters) == 0
    finally:
        coordinator.stop()
    print(
        f"\ncoordinator SIGKILLed {crash_point.replace('_', ' ')} with {len(pairs)} transfers in doubt:"
        f" restarted and resolved (gauge {seen_in_doubt:.0f} -> 0) {recovered_after:.1f} s after the kill"
    )


@dataclass
class Call:
    """One mutating call of the load and what became of it."""

    request: cpb.PurchaseRequest | cpb.ConsumeRequest | cpb.TransferRequest
    outcome: str = "pending"
    """`applied` or `refused` (retried with its request id until one of them)."""
    attempts: int = 0

    def changes(self) -> list[tuple[str, int, str]]:
        """(account, amount added, event type) of each event the call records when applied."""
        request = self.request
        if isinstance(request, cpb.TransferRequest):
            return [
                (request.from_account_id, -request.amount, "TransferredOut"),
                (request.to_account_id, request.amount, "TransferredIn"),
            ]
        if isinstance(request, cpb.PurchaseRequest):
            return [(request.account_id, request.amount, "Purchased")]
        return [(request.account_id, -request.amount, "Consumed")]


@dataclass
class Load:
    """Consumes, purchases and transfers with request ids, each retried (same id) until it settles."""

    credits: CreditsClient
    accounts: list[str]
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    refusals_by_reason: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    failed_reads: list[str] = field(default_factory=list)

    async def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            account = rng.choice(self.accounts)
            request_id = uuid.uuid4().hex
            request: cpb.PurchaseRequest | cpb.ConsumeRequest | cpb.TransferRequest
            dice = rng.random()
            if dice < 0.25:
                request = cpb.PurchaseRequest(
                    account_id=account, amount=rng.randint(1, 20), payment_reference="load", request_id=request_id
                )
            elif dice < 0.45:
                other = rng.choice([a for a in self.accounts if a != account])
                request = cpb.TransferRequest(
                    from_account_id=account, to_account_id=other, amount=rng.randint(1, 10), request_id=request_id
                )
            else:
                request = cpb.ConsumeRequest(account_id=account, amount=rng.randint(1, 10), request_id=request_id)
            call = Call(request)
            self.calls.append(call)
            await self.settle(call)

    async def settle(self, call: Call) -> None:
        while True:
            call.attempts += 1
            try:
                if isinstance(call.request, cpb.PurchaseRequest):
                    await self.credits.purchase(call.request, timeout=10)
                elif isinstance(call.request, cpb.TransferRequest):
                    await self.credits.transfer(call.request, timeout=10)
                else:
                    await self.credits.consume(call.request, timeout=10)
            except ShieldxError as error:
                if error.code == grpc.StatusCode.FAILED_PRECONDITION:
                    call.outcome = "refused"
                    return
                self.refusals_by_reason[error.reason or error.code.name] = (
                    self.refusals_by_reason.get(error.reason or error.code.name, 0) + 1
                )
                assert error.code in RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}, error
                await asyncio.sleep(0.05)
                continue
            call.outcome = "applied"
            return

    async def reader(self, seed: int) -> None:
        """GetBalance of random accounts, all along: every read must be answered."""
        rng = random.Random(seed)
        while not self.stop.is_set():
            try:
                await self.credits.get_balance(cpb.GetBalanceRequest(account_id=rng.choice(self.accounts)))
            except ShieldxError as error:
                self.failed_reads.append(f"{error.code.name} {error.reason}")
            self.reads += 1

    def expected(self, account_id: str, opening: int) -> int:
        return opening + sum(
            amount
            for call in self.calls
            if call.outcome == "applied"
            for account, amount, _ in call.changes()
            if account == account_id
        )


def primary_events(clusters: list[PgShard], request_ids: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    """(shard node, account, type) of the main events of each request id, over every primary."""
    found: dict[str, list[tuple[str, str, str]]] = {}
    for cluster in clusters:
        rows = cluster.primary.query(
            "SELECT request_id, account_id, type FROM credits.event_store WHERE type IN"
            " ('Purchased', 'Consumed', 'TransferredOut', 'TransferredIn') AND request_id = ANY(%s)",
            (request_ids,),
        )
        for request_id, account_id, kind in rows:
            found.setdefault(request_id, []).append((cluster.name, account_id, kind))
    return found


BEYOND_FUNDS = 10**12


async def refused_consume(credits: CreditsClient, account_id: str) -> cpb.ConsumeRequest:
    """A consume beyond the account's funds, refused INSUFFICIENT_CREDITS (and recorded under its request id)."""
    request = cpb.ConsumeRequest(account_id=account_id, amount=BEYOND_FUNDS, request_id=f"too-much-{account_id}")
    with pytest.raises(ShieldxError) as refused:
        await credits.consume(request)
    assert refused.value.reason == "INSUFFICIENT_CREDITS"
    return request


def accounts_on_several_shards(clusters: list[PgShard]) -> set[str]:
    """Accounts with events on more than one shard's primary."""
    seen: dict[str, int] = {}
    for cluster in clusters:
        for (account_id,) in cluster.primary.query("SELECT DISTINCT account_id FROM credits.event_store"):
            seen[account_id] = seen.get(account_id, 0) + 1
    return {account_id for account_id, shards in seen.items() if shards > 1}


async def test_adding_a_shard_under_load_rebalances_with_every_balance_and_chain_intact(mesh: Mesh) -> None:
    mesh.clusters["shard-c"] = await asyncio.to_thread(mesh.pg.shard, "sc", replicas=0, settings=TWO_PHASE)
    clusters = list(mesh.clusters.values())
    async with mesh.clients() as (credits, sharding):
        groups = await accounts_by_shard(sharding, 30, "move")
        accounts = [a for ids in groups.values() for a in ids]
        await fund(credits, accounts)
        opening = await balances(credits, accounts)
        refused = {a: await refused_consume(credits, a) for a in accounts}  # recorded refusals move too
        load = Load(credits, accounts)
        workers = [asyncio.create_task(load.worker(seed)) for seed in range(6)]
        workers += [asyncio.create_task(load.reader(seed)) for seed in range(2)]
        try:
            await asyncio.sleep(0.5)
            await register(sharding, "shard-c", mesh.clusters["shard-c"])
            started = time.monotonic()
            status = await rebalance(sharding)
            took = time.monotonic() - started
            during = len(load.calls)
            await asyncio.sleep(0.5)  # the load goes on against the new placement
        finally:
            load.stop.set()
            await asyncio.gather(*workers)

        assert status.failed_accounts == 0 and status.total_accounts > 0, status
        assert load.reads > 100 and not load.failed_reads, f"reads kept working: {load.failed_reads[:3]}"
        assert not await asyncio.to_thread(accounts_on_several_shards, clusters), "no copy left behind"
        located = {
            location.key: location.shard_id
            for location in (await sharding.locate_keys(spb.LocateKeysRequest(keys=accounts))).locations
        }
        assert any(shard == "shard-c" for shard in located.values()), "some accounts moved to the new shard"
        applied = [c for c in load.calls if c.outcome == "applied"]
        assert applied and all(c.outcome in ("applied", "refused") for c in load.calls)
        found = await asyncio.to_thread(primary_events, clusters, [c.request.request_id for c in applied])
        node_of = {shard_id: mesh.clusters[shard_id].name for shard_id in mesh.clusters}
        for call in applied:
            places = sorted(found.get(call.request.request_id, []))
            expected = sorted((node_of[located[account]], account, kind) for account, _, kind in call.changes())
            assert places == expected, f"{call.request.request_id} recorded exactly once, on the account's shard"
        transfers = sum(isinstance(c.request, cpb.TransferRequest) for c in applied)
        now = await balances(credits, accounts)
        for account_id in accounts:
            assert now[account_id] == load.expected(account_id, opening[account_id]), account_id
        chain = await credits.verify_audit_chain(cpb.VerifyAuditChainRequest())
        assert chain.ok, chain.first_mismatch
        for account_id in accounts:
            assert (await credits.verify_audit_chain(cpb.VerifyAuditChainRequest(account_id=account_id))).ok
        # Funded well enough now, a moved account still answers the retry of a refused consume with the
        # recorded refusal instead of carrying it out.
        moved = [a for a in accounts if located[a] == "shard-c"]
        for account_id in moved:
            await credits.purchase(
                cpb.PurchaseRequest(account_id=account_id, amount=2 * BEYOND_FUNDS, payment_reference="top-up")
            )
        for account_id in moved:
            with pytest.raises(ShieldxError) as retried:
                await credits.consume(refused[account_id])
            assert retried.value.reason == "INSUFFICIENT_CREDITS", account_id
    print(
        f"\nshard-c added under load: rebalance of {status.total_accounts} accounts in {took:.1f} s;"
        f" {len(load.calls)} operations ({during} while moving), {len(applied)} applied ({transfers} transfers),"
        " all present exactly once;"
        f" retried answers while moving: {load.refusals_by_reason}; {load.reads} balance reads, none failed"
    )
