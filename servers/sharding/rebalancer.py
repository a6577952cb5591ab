"""The rebalance engine: plans from real account lists and drives every move through a pluggable mover.

The sharding server knows the ring, not the accounts, and cannot read or write credits events.
Both come from an `AccountMover`, supplied by the credits side (phase 2). Without one,
`PlanRebalance` and `StartRebalance` are refused with REBALANCE_MOVER_UNAVAILABLE.

The engine (`Rebalancer.run`, a background task) owns the running rebalance. For each batch
of PENDING accounts (`RebalanceConfig.batch_size`) it:

1. marks them COPYING and calls `mover.copy`, then VERIFYING and `mover.verify` (concurrently,
   at most `concurrency` accounts at once);
2. marks the verified ones FENCED and publishes one topology version listing them as fenced
   (followers refuse their writes), then calls `mover.fence` for each, bounded by
   `fence_timeout`;
3. marks those that fenced in time CUT_OVER and publishes one version listing them as moved
   (followers now use the target shard); any account that failed or overran its fence gets
   `mover.unfence` and goes back to PENDING (FAILED after `max_attempts`);
4. calls `mover.cleanup` for each cut-over account and marks it DONE (a failed cleanup is
   recorded and retried; the target already serves the account).

Every state change is written to `rebalance_accounts` in the transaction that publishes the
matching topology. When every planned account is DONE the rebalance enters FINALIZING (one
version fencing every key whose shard changes and that has not moved), sweeps the serving
shards with `mover.list_accounts` for accounts created meanwhile, moves them the same way,
then completes: JOINING shards become ACTIVE and LEAVING shards leave the topology.

After a restart, accounts left COPYING or VERIFYING count as a failed attempt; FENCED ones
are unfenced first. A rebalance whose remaining accounts all FAILED waits for an operator:
`StartRebalance` gives them fresh attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from servers.mesh.errors import Conflict, FailedPrecondition
from servers.mesh.leadership import Leadership, SoleLeadership
from servers.mesh.storage import Transaction
from servers.sharding.domain import Reason, Shard, ShardState
from servers.sharding.nodes import one_line
from servers.sharding.rebalance import (
    AccountMove,
    AccountState,
    RebalanceConfig,
    RebalancePhase,
    RebalancePlan,
    RebalanceWorkflow,
    plan_rebalance,
)
from servers.sharding.registry import Clock, TopologyRegistry, utc_now
from servers.sharding.store import ShardingStore
from servers.sharding.topology import Topology

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
"""How soon the engine retries after an error or failed cleanups, unless kicked earlier."""
LEAD_TIMEOUT_SECONDS = 5.0
"""Longest wait for the registry's store when asking for the lead."""


class AccountMover(Protocol):
    """Moves one account's credits events between shards; implemented by the credits side.

    Every method gets the shards as the current topology has them (their primaries may have
    changed since the last call, after a failover) and signals failure by raising any
    exception, whose message is kept as the account's last error (so it must hold no secret).
    Each must be safe to call again for the same account after a failure or a restart.
    """

    async def list_accounts(self, shard: Shard) -> Sequence[str]:
        """Every account whose events live on `shard`'s primary now.

        Accounts that have moved away (only a "moved" marker left, see `cleanup`) are not
        listed. Used to plan a rebalance and, while finalizing, to find accounts created after
        the plan.
        """
        ...

    async def copy(self, move: AccountMove, source: Shard, target: Shard) -> None:
        """Copy the account's events from `source` to `target` while writes go on at the source.

        First discard whatever an earlier attempt left on the target for this account, then
        copy every event with its sequence number and audit-chain hash unchanged, in one or
        more transactions on the target. Events appended during the copy may be missed; the
        fence step copies them.
        """
        ...

    async def verify(self, move: AccountMove, source: Shard, target: Shard) -> None:
        """Check the target copy against the source: same events up to the copied sequence, the
        audit chain verifying end to end, the same balance. Raise on any difference."""
        ...

    async def fence(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        """Make the source refuse the account's writes, then copy and verify what was appended since `copy`.

        The fence must be recorded on the source shard itself (a row the credits append
        transaction checks, keyed by account and naming `rebalance_id`), because a credits server
        still on an older topology may write there. When this returns, the target holds every
        event the source ever acknowledged for the account. Must finish within the
        rebalance's `fence_timeout`, or the engine gives up on the attempt.
        """
        ...

    async def unfence(self, move: AccountMove, source: Shard, rebalance_id: str) -> None:
        """Lift the source fence of `rebalance_id` after a failed attempt, so writes resume at the source;
        also discard the partial target copy. Must not fail if no fence was recorded."""
        ...

    async def cleanup(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        """After the cut-over, delete the account's events from the source, leaving its fence in place as a
        permanent "moved to `target`" marker that keeps refusing stale writers."""
        ...


class RebalanceMetrics:
    """Account moves by outcome and the length of write fences."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.moves = Counter(
            "shieldx_sharding_rebalance_account_moves",
            "Account move attempts by outcome (done, retried, failed)",
            ("outcome",),
            registry=registry,
        )
        self.fence = Histogram(
            "shieldx_sharding_rebalance_fence_seconds",
            "How long a batch's writes were fenced, from the fence to the cut-over being published",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=registry,
        )


class Rebalancer:
    """Starts, resumes and drives rebalances."""

    def __init__(
        self,
        registry: TopologyRegistry,
        store: ShardingStore,
        mover: AccountMover | None,
        metrics: RebalanceMetrics,
        *,
        config: RebalanceConfig | None = None,
        concurrency: int = 8,
        leadership: Leadership | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.registry = registry
        self.store = store
        self.mover = mover
        self.metrics = metrics
        self.config = config or RebalanceConfig()
        self.leadership: Leadership = leadership or SoleLeadership()
        self.clock = clock
        self._concurrency = asyncio.Semaphore(max(1, concurrency))
        self._driving = asyncio.Lock()
        self._kicked = asyncio.Event()

    def require_mover(self) -> AccountMover:
        """The mover (FailedPrecondition REBALANCE_MOVER_UNAVAILABLE without one)."""
        if self.mover is None:
            raise FailedPrecondition(
                "no account mover is configured on this sharding server, so it cannot list or move accounts;"
                " rebalancing needs the credits mover",
                reason=Reason.REBALANCE_MOVER_UNAVAILABLE,
            )
        return self.mover

    async def plan(self, topology: Topology) -> RebalancePlan:
        """The moves the topology's pending change needs, over every account the serving shards hold."""
        mover = self.require_mover()
        if not topology.has_pending_change:
            raise FailedPrecondition("no shard is joining or leaving", reason=Reason.NOTHING_TO_REBALANCE)
        serving = [s for s in topology.shards if s.state is not ShardState.JOINING]
        listed = await asyncio.gather(*(mover.list_accounts(shard) for shard in serving))
        accounts = sorted({a for one in listed for a in one})
        return plan_rebalance(topology.ring, topology.target_ring, accounts)

    async def start(self, tx: Transaction, plan: RebalancePlan, planned_from: Topology) -> tuple[Topology, str]:
        """Store a new rebalance of `plan` and its routing inside `tx`; kick the engine after commit."""
        current = await self.registry.read(tx)
        if current.migration is not None:
            raise _in_progress(current.migration.rebalance_id)
        if current.ring != planned_from.ring or current.target_ring != planned_from.target_ring:
            raise Conflict("the shards changed while the rebalance was planned; retry")
        workflow = RebalanceWorkflow.start(f"rb-{uuid.uuid4().hex[:16]}", plan, now=self.clock(), config=self.config)
        await self.store.create_rebalance(tx, workflow, current.version)
        topology = await self.registry.apply(tx, lambda t: t.with_migration(workflow.routing(), now=self.clock()))
        return topology, workflow.rebalance_id

    async def resume(self, tx: Transaction, rebalance_id: str) -> str:
        """Give the FAILED accounts of an otherwise finished-moving rebalance fresh attempts inside `tx`."""
        if self._driving.locked():
            raise _in_progress(rebalance_id)
        workflow = await self.store.load_workflow(tx, rebalance_id, self.config)
        if workflow is None:
            raise _in_progress(rebalance_id)
        progress = workflow.progress()
        if not progress.count(AccountState.FAILED):
            raise _in_progress(rebalance_id)
        workflow.retry_failed(now=self.clock())
        await self.store.save_accounts(tx, rebalance_id, workflow.accounts(AccountState.PENDING))
        return rebalance_id

    def kick(self) -> None:
        """Look for work now."""
        self._kicked.set()

    async def run(self) -> None:
        """Drive the running rebalance whenever there is one, until cancelled; errors are logged and retried.

        A rebalance another sharding server started arrives with its topology (then the engine
        looks); of the servers sharing the registry, only the one holding the lead drives.
        """
        self.registry.on_publish(lambda topology: self.kick() if topology.migration is not None else None)
        try:
            while True:
                retry = False
                try:
                    retry = await self.drive_running()
                except Exception:
                    log.exception("rebalance step failed; retrying in %ss", RETRY_SECONDS)
                    retry = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kicked.wait(), RETRY_SECONDS if retry else None)
                self._kicked.clear()
        finally:
            await asyncio.shield(self.leadership.release())

    async def drive_running(self) -> bool:
        """Move the running rebalance as far as it goes; True if it should be retried later (also when
        another sharding server drives it: this one then asks again, to take over if that one stops)."""
        routing = self.registry.current.migration
        if routing is None or self.mover is None:
            return False
        if not await self.leadership.lead(LEAD_TIMEOUT_SECONDS):
            return True
        async with self._driving:
            async with self.store.database.transaction() as tx:
                workflow = await self.store.load_workflow(tx, routing.rebalance_id, self.config)
            if workflow is None or workflow.phase is RebalancePhase.COMPLETED:
                return False
            await self._recover_interrupted(self.mover, workflow)
            return await self._drive(self.mover, workflow)

    async def _drive(self, mover: AccountMover, workflow: RebalanceWorkflow) -> bool:
        while True:
            batch = workflow.next_batch(now=self.clock())
            if batch:
                await self._move_batch(mover, workflow, batch)
                continue
            await self._clean_up(mover, workflow, [p.move for p in workflow.accounts(AccountState.CUT_OVER)])
            progress = workflow.progress()
            if progress.count(AccountState.DONE) != progress.total:
                return bool(workflow.accounts(AccountState.CUT_OVER))
            if workflow.phase is RebalancePhase.RUNNING:
                workflow.begin_finalizing()
                await self._publish(workflow, [])
            stragglers = await self._sweep(mover, workflow)
            if stragglers:
                workflow.add_accounts(stragglers, now=self.clock())
                await self._publish(workflow, stragglers)
                continue
            workflow.complete(now=self.clock())
            await self._complete(workflow)
            log.info("rebalance %s completed: %d accounts moved", workflow.rebalance_id, progress.total)
            return False

    async def _move_batch(self, mover: AccountMover, workflow: RebalanceWorkflow, batch: list[AccountMove]) -> None:
        await self._save(workflow, batch)
        copied = await asyncio.gather(*(self._copy(mover, workflow, move) for move in batch))
        ready = [move for move, ok in zip(batch, copied, strict=True) if ok]
        for move in ready:
            workflow.advance(move.account_id, AccountState.FENCED, now=self.clock())
        await self._publish(workflow, batch)
        if not ready:
            return
        fenced_at = asyncio.get_running_loop().time()
        fenced = await asyncio.gather(*(self._fence(mover, workflow, move) for move in ready))
        cut = [move for move, ok in zip(ready, fenced, strict=True) if ok]
        for move in cut:
            workflow.advance(move.account_id, AccountState.CUT_OVER, now=self.clock())
        await self._publish(workflow, ready)
        self.metrics.fence.observe(asyncio.get_running_loop().time() - fenced_at)
        await self._clean_up(mover, workflow, cut)

    async def _copy(self, mover: AccountMover, workflow: RebalanceWorkflow, move: AccountMove) -> bool:
        async with self._concurrency:
            try:
                source, target = self._shards(move)
                await mover.copy(move, source, target)
                workflow.advance(move.account_id, AccountState.VERIFYING, now=self.clock())
                await mover.verify(move, source, target)
            except Exception as error:
                self._failed(workflow, move, f"copy: {one_line(error)}")
                return False
            return True

    async def _fence(self, mover: AccountMover, workflow: RebalanceWorkflow, move: AccountMove) -> bool:
        async with self._concurrency:
            try:
                source, target = self._shards(move)
                async with asyncio.timeout(self.config.fence_timeout.total_seconds()):
                    await mover.fence(move, source, target, workflow.rebalance_id)
            except Exception as error:
                detail = "write fence held longer than fence_timeout" if isinstance(error, TimeoutError) else ""
                await self._unfence(mover, workflow, move)
                self._failed(workflow, move, f"fence: {detail or one_line(error)}")
                return False
            return True

    async def _clean_up(self, mover: AccountMover, workflow: RebalanceWorkflow, moves: Sequence[AccountMove]) -> None:
        async def one(move: AccountMove) -> None:
            async with self._concurrency:
                try:
                    source, target = self._shards(move)
                    await mover.cleanup(move, source, target, workflow.rebalance_id)
                except Exception as error:
                    workflow.fail(move.account_id, f"cleanup: {one_line(error)}", now=self.clock())
                    return
                workflow.advance(move.account_id, AccountState.DONE, now=self.clock())
                self.metrics.moves.labels("done").inc()

        if moves:
            await asyncio.gather(*(one(move) for move in moves))
            await self._save(workflow, moves)

    async def _unfence(self, mover: AccountMover, workflow: RebalanceWorkflow, move: AccountMove) -> None:
        try:
            source, _ = self._shards(move)
            await mover.unfence(move, source, workflow.rebalance_id)
        except Exception as error:
            # The account stays fenced at its source until a later attempt succeeds or unfences it.
            log.warning("unfencing %s failed: %s", move.account_id, one_line(error))

    def _failed(self, workflow: RebalanceWorkflow, move: AccountMove, error: str) -> None:
        state = workflow.fail(move.account_id, error, now=self.clock())
        self.metrics.moves.labels("failed" if state is AccountState.FAILED else "retried").inc()

    async def _recover_interrupted(self, mover: AccountMover, workflow: RebalanceWorkflow) -> None:
        interrupted = [
            p.move
            for p in workflow.accounts()
            if p.state in (AccountState.COPYING, AccountState.VERIFYING, AccountState.FENCED)
        ]
        for move in interrupted:
            if workflow.account(move.account_id).state is AccountState.FENCED:
                await self._unfence(mover, workflow, move)
            self._failed(workflow, move, "interrupted by a restart of the sharding server")
        if interrupted:
            await self._publish(workflow, interrupted)

    async def _sweep(self, mover: AccountMover, workflow: RebalanceWorkflow) -> list[AccountMove]:
        topology = self.registry.current
        known = {p.move.account_id for p in workflow.accounts()}
        stragglers = []
        for shard in topology.shards:
            if shard.state is ShardState.JOINING:
                continue
            for account_id in await mover.list_accounts(shard):
                if account_id in known:
                    continue
                target = topology.target_ring.locate(account_id)
                if target != shard.shard_id:
                    stragglers.append(AccountMove(account_id, shard.shard_id, target))
                    known.add(account_id)
        return stragglers

    def _shards(self, move: AccountMove) -> tuple[Shard, Shard]:
        topology = self.registry.current
        return topology.shard(move.source_shard), topology.shard(move.target_shard)

    async def _save(self, workflow: RebalanceWorkflow, moves: Sequence[AccountMove]) -> None:
        progress = [workflow.account(m.account_id) for m in moves]
        async with self.store.database.transaction() as tx:
            await self.store.save_accounts(tx, workflow.rebalance_id, progress)

    async def _publish(self, workflow: RebalanceWorkflow, moves: Sequence[AccountMove]) -> None:
        """Write the accounts' states and the phase with the routing they give, as one topology version."""
        progress = [workflow.account(m.account_id) for m in moves]

        async def rows(tx: Transaction, _: Topology) -> None:
            await self.store.save_accounts(tx, workflow.rebalance_id, progress)
            await self.store.save_rebalance(tx, workflow)

        await self.registry.commit(lambda t: t.with_migration(workflow.routing(), now=self.clock()), also=rows)

    async def _complete(self, workflow: RebalanceWorkflow) -> None:
        async def phase(tx: Transaction, _: Topology) -> None:
            await self.store.save_rebalance(tx, workflow)

        await self.registry.commit(lambda t: t.complete_migration(workflow.rebalance_id, now=self.clock()), also=phase)


def _in_progress(rebalance_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"rebalance {rebalance_id!r} is still moving accounts",
        reason=Reason.REBALANCE_IN_PROGRESS,
        metadata={"rebalance_id": rebalance_id},
    )
