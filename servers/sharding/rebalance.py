"""Rebalancing: which accounts move when the ring changes, and the workflow that moves them.

Each moving account goes PENDING -> COPYING (its events are copied to the target shard while
writes continue on the source) -> VERIFYING (the copy is checked against the source, audit
chain included) -> FENCED (writes refused for a moment while events appended since the copy
are copied and verified) -> CUT_OVER (the target shard serves it) -> DONE (the source copy
removed). A failure before CUT_OVER sends the account back to PENDING for another attempt,
and after `max_attempts` to FAILED, where it stays on its source shard; the rebalance cannot
complete until it is retried and moved. A fence older than `fence_timeout` is lifted the same
way, so a stuck copy never blocks an account's writes for long. Every attempt starts by
discarding whatever an earlier attempt left on the target shard.

The fence is only as good as the place that enforces it: the topology flag lets credits
servers refuse early, but a server still on an older topology version could write to the
source shard after the cut-over. The mover therefore also records the fence on the source
shard, checked in the same transaction that appends events, and leaves it in place (as a
"moved" marker) after cleanup.

Accounts created while a rebalance runs are not in the plan and land on their source shard.
Before completing, the workflow enters FINALIZING: the topology then fences writes to every
key whose shard changes and which has not moved yet, the mover sweeps the source shards for
such stragglers (`add_accounts`), moves them, and only then switches rings.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from servers.mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from servers.sharding.domain import Reason, validate_key
from servers.sharding.ring import HashRing, key_points
from servers.sharding.topology import MigrationRouting

MAX_ERROR_LENGTH = 500
"""Longest error text kept per account."""


@dataclass(frozen=True)
class AccountMove:
    """One account changing shards."""

    account_id: str
    """The account."""
    source_shard: str
    """Where its events are now."""
    target_shard: str
    """Where they go."""


@dataclass(frozen=True)
class RebalancePlan:
    """The accounts a ring change moves, sorted by account id."""

    moves: tuple[AccountMove, ...]
    """Every account whose shard changes."""
    total_accounts: int
    """Accounts considered (moving or not), after removing duplicates."""
    expected_moved_fraction: float
    """Share of the key space whose shard changes (what a uniform account set would move)."""

    @property
    def moved_fraction(self) -> float:
        """Share of the given accounts that move (0 when there are none)."""
        return len(self.moves) / self.total_accounts if self.total_accounts else 0.0

    def flows(self) -> dict[tuple[str, str], int]:
        """How many accounts go from each source shard to each target shard, sorted."""
        counted = Counter((m.source_shard, m.target_shard) for m in self.moves)
        return dict(sorted(counted.items()))


def plan_rebalance(old: HashRing, new: HashRing, account_ids: Iterable[str]) -> RebalancePlan:
    """The moves that switching from `old` to `new` causes for these accounts.

    Duplicate ids count once. Both rings must have shards if there are accounts.
    """
    unique = list(dict.fromkeys(account_ids))
    for i, account_id in enumerate(unique):
        validate_key(account_id, f"account_ids[{i}]")
    expected = old.moved_share(new)
    if not unique:
        return RebalancePlan((), 0, expected)
    if not len(old) or not len(new):
        raise FailedPrecondition("both rings need at least one shard", reason=Reason.NO_SHARDS)
    points = key_points(unique)
    before = old.locate_points(points)
    after = new.locate_points(points)
    # Compare by name: the two rings number their shards differently.
    index_in_new = {shard_id: i for i, shard_id in enumerate(new.shard_ids)}
    translated = np.array([index_in_new.get(s, -1) for s in old.shard_ids], dtype=np.intp)
    moving = np.flatnonzero(translated[before] != after)
    moves = sorted(
        (AccountMove(unique[i], old.shard_ids[before[i]], new.shard_ids[after[i]]) for i in moving.tolist()),
        key=lambda m: m.account_id,
    )
    return RebalancePlan(tuple(moves), len(unique), expected)


class AccountState(enum.Enum):
    """Where one account is in its move."""

    PENDING = "pending"
    """Waiting to be picked up (again, after a failed attempt)."""
    COPYING = "copying"
    """Events being copied to the target; writes still go to the source."""
    VERIFYING = "verifying"
    """The copy being checked against the source."""
    FENCED = "fenced"
    """Writes refused while the last events are copied and verified."""
    CUT_OVER = "cut_over"
    """Served by the target shard; the source copy not yet removed."""
    DONE = "done"
    """Moved and the source copy removed."""
    FAILED = "failed"
    """Gave up after `max_attempts`; still served by its source shard."""


_NEXT: Mapping[AccountState, AccountState] = {
    AccountState.COPYING: AccountState.VERIFYING,
    AccountState.VERIFYING: AccountState.FENCED,
    AccountState.FENCED: AccountState.CUT_OVER,
    AccountState.CUT_OVER: AccountState.DONE,
}
_RETRYABLE = frozenset({AccountState.COPYING, AccountState.VERIFYING, AccountState.FENCED})
_MOVED = frozenset({AccountState.CUT_OVER, AccountState.DONE})


class RebalancePhase(enum.Enum):
    """Where the rebalance as a whole is."""

    RUNNING = "running"
    """Moving the planned accounts."""
    FINALIZING = "finalizing"
    """All planned accounts moved; fencing and sweeping up accounts created meanwhile."""
    COMPLETED = "completed"
    """The target ring is the serving ring."""


@dataclass(frozen=True)
class RebalanceConfig:
    """How the workflow paces and retries moves."""

    batch_size: int = 100
    """Accounts started together (a fence and a cut-over each publish one topology version
    per batch, so this bounds topology churn)."""
    max_attempts: int = 3
    """Attempts per account before it is marked FAILED."""
    fence_timeout: timedelta = timedelta(seconds=2)
    """Longest an account's writes stay fenced; past it the fence is lifted and it is retried."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise InvalidArgument("batch_size", "must be between 1 and 10000")
        if not 1 <= self.max_attempts <= 100:
            raise InvalidArgument("max_attempts", "must be between 1 and 100")
        if self.fence_timeout <= timedelta(0):
            raise InvalidArgument("fence_timeout", "must be positive")


@dataclass
class AccountProgress:
    """One account's move, as the store persists it."""

    move: AccountMove
    """What moves where."""
    state: AccountState = AccountState.PENDING
    """Where it is."""
    attempts: int = 0
    """Attempts started so far."""
    fenced_at: datetime | None = None
    """When its writes were fenced (while FENCED)."""
    last_error: str = ""
    """Why the last attempt failed, for the operator."""
    updated_at: datetime | None = None
    """Last state change."""


@dataclass(frozen=True)
class RebalanceProgress:
    """Counts of accounts per state."""

    total: int
    """Accounts in the rebalance."""
    by_state: Mapping[AccountState, int] = field(default_factory=dict)
    """Accounts per state (states with none are absent)."""

    def count(self, state: AccountState) -> int:
        """Accounts in `state`."""
        return self.by_state.get(state, 0)

    @property
    def fraction_done(self) -> float:
        """Share of accounts DONE (1.0 for an empty rebalance)."""
        return self.count(AccountState.DONE) / self.total if self.total else 1.0


class RebalanceWorkflow:
    """The state of one rebalance; the mover drives it and the store persists its accounts."""

    def __init__(
        self,
        rebalance_id: str,
        accounts: Iterable[AccountProgress],
        *,
        started_at: datetime,
        config: RebalanceConfig | None = None,
        phase: RebalancePhase = RebalancePhase.RUNNING,
        finished_at: datetime | None = None,
    ) -> None:
        if not rebalance_id:
            raise InvalidArgument("rebalance_id", "must not be empty")
        self.rebalance_id = rebalance_id
        self.config = config or RebalanceConfig()
        self.phase = phase
        self.started_at = started_at
        self.finished_at = finished_at
        self._accounts: dict[str, AccountProgress] = {}
        for progress in accounts:
            self._accounts[progress.move.account_id] = progress

    @classmethod
    def start(
        cls, rebalance_id: str, plan: RebalancePlan, *, now: datetime, config: RebalanceConfig | None = None
    ) -> RebalanceWorkflow:
        """A new rebalance with every planned move PENDING."""
        return cls(
            rebalance_id,
            (AccountProgress(move, updated_at=now) for move in plan.moves),
            started_at=now,
            config=config,
        )

    def account(self, account_id: str) -> AccountProgress:
        """An account's progress (NotFound ACCOUNT_NOT_IN_REBALANCE)."""
        try:
            return self._accounts[account_id]
        except KeyError:
            raise NotFound("account", account_id, reason=Reason.ACCOUNT_NOT_IN_REBALANCE) from None

    def accounts(self, state: AccountState | None = None) -> list[AccountProgress]:
        """Accounts (in `state`, if given), sorted by account id."""
        chosen = (p for p in self._accounts.values() if state is None or p.state is state)
        return sorted(chosen, key=lambda p: p.move.account_id)

    def progress(self) -> RebalanceProgress:
        """Counts per state."""
        return RebalanceProgress(len(self._accounts), dict(Counter(p.state for p in self._accounts.values())))

    def routing(self) -> MigrationRouting:
        """The topology's routing overrides for the accounts' current states."""
        return MigrationRouting(
            rebalance_id=self.rebalance_id,
            fenced=frozenset(a for a, p in self._accounts.items() if p.state is AccountState.FENCED),
            moved=frozenset(a for a, p in self._accounts.items() if p.state in _MOVED),
            fence_unplanned=self.phase is RebalancePhase.FINALIZING,
        )

    def next_batch(self, *, now: datetime) -> list[AccountMove]:
        """Up to `batch_size` PENDING accounts, now COPYING; empty when none is pending."""
        self._refuse_if_completed()
        batch = self.accounts(AccountState.PENDING)[: self.config.batch_size]
        for progress in batch:
            progress.state = AccountState.COPYING
            progress.attempts += 1
            progress.last_error = ""
            progress.updated_at = now
        return [p.move for p in batch]

    def advance(self, account_id: str, to: AccountState, *, now: datetime) -> None:
        """Move an account one step forward (FailedPrecondition INVALID_TRANSITION otherwise)."""
        self._refuse_if_completed()
        progress = self.account(account_id)
        if _NEXT.get(progress.state) is not to:
            raise FailedPrecondition(
                f"account {account_id!r} cannot go from {progress.state.value} to {to.value}",
                reason=Reason.INVALID_TRANSITION,
                metadata={"from": progress.state.value, "to": to.value},
            )
        progress.state = to
        progress.fenced_at = now if to is AccountState.FENCED else None
        progress.updated_at = now

    def fail(self, account_id: str, error: str, *, now: datetime) -> AccountState:
        """Record a failed attempt; returns the account's new state.

        Before the cut-over the account goes back to PENDING (or FAILED after `max_attempts`)
        and stays on its source shard. After it, the target already serves the account, so a
        failed cleanup is only recorded and retried.
        """
        self._refuse_if_completed()
        progress = self.account(account_id)
        progress.last_error = error[:MAX_ERROR_LENGTH]
        progress.updated_at = now
        if progress.state in _RETRYABLE:
            exhausted = progress.attempts >= self.config.max_attempts
            progress.state = AccountState.FAILED if exhausted else AccountState.PENDING
            progress.fenced_at = None
        return progress.state

    def expire_fences(self, *, now: datetime) -> list[str]:
        """Lift fences older than `fence_timeout` (each counts as a failed attempt)."""
        expired = [
            p.move.account_id
            for p in self._accounts.values()
            if p.state is AccountState.FENCED
            and p.fenced_at is not None
            and now - p.fenced_at > self.config.fence_timeout
        ]
        for account_id in expired:
            self.fail(account_id, "write fence held longer than fence_timeout", now=now)
        return sorted(expired)

    def retry_failed(self, *, now: datetime) -> int:
        """Give FAILED accounts a fresh set of attempts; returns how many."""
        self._refuse_if_completed()
        failed = self.accounts(AccountState.FAILED)
        for progress in failed:
            progress.state = AccountState.PENDING
            progress.attempts = 0
            progress.updated_at = now
        return len(failed)

    def add_accounts(self, moves: Sequence[AccountMove], *, now: datetime) -> int:
        """Add accounts found by a sweep (created after planning); returns how many were new."""
        self._refuse_if_completed()
        added = 0
        for move in moves:
            if move.account_id not in self._accounts:
                self._accounts[move.account_id] = AccountProgress(move, updated_at=now)
                added += 1
        return added

    def begin_finalizing(self) -> None:
        """Enter FINALIZING once every planned account is DONE (REBALANCE_UNFINISHED otherwise)."""
        if self.phase is not RebalancePhase.RUNNING:
            raise FailedPrecondition(f"rebalance is {self.phase.value}", reason=Reason.INVALID_TRANSITION)
        self._refuse_unless_all_done()
        self.phase = RebalancePhase.FINALIZING

    def complete(self, *, now: datetime) -> None:
        """Finish: the caller then switches the topology to the target ring."""
        if self.phase is not RebalancePhase.FINALIZING:
            raise FailedPrecondition(
                "a rebalance completes from FINALIZING, after the straggler sweep", reason=Reason.INVALID_TRANSITION
            )
        self._refuse_unless_all_done()
        self.phase = RebalancePhase.COMPLETED
        self.finished_at = now

    def _refuse_unless_all_done(self) -> None:
        progress = self.progress()
        unfinished = progress.total - progress.count(AccountState.DONE)
        if unfinished:
            raise FailedPrecondition(
                f"{unfinished} accounts have not finished moving",
                reason=Reason.REBALANCE_UNFINISHED,
                metadata={"unfinished": str(unfinished), "failed": str(progress.count(AccountState.FAILED))},
            )

    def _refuse_if_completed(self) -> None:
        if self.phase is RebalancePhase.COMPLETED:
            raise FailedPrecondition("the rebalance has completed", reason=Reason.INVALID_TRANSITION)
