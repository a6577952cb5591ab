"""The deception service's in-memory books and how every change to them reaches the store.

Sessions, alerts, the decoy selector and the honeytoken registry live in memory (the domain
objects) and are mirrored by the store. A change runs inside `DeceptionBooks.change`, one at a
time: its work calls `begin(tx)` first and then changes the books and writes the new state in
the same transaction. The domain checks a request before it changes anything, so a refusal
leaves the books as they were; any other failure after a change (the transaction rolled back,
the request was cancelled) leaves the books ahead of the store, and they are reloaded from the
store before anything else is changed or, as soon as the lock is free, for readers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from servers.deception.alert_forwarding import notification_for
from servers.deception.alert_store import Notification
from servers.deception.alerts import Alert, AlertBook, AlertUpdate, DeduplicationPolicy
from servers.deception.bandit import DecoySelector, DecoyStats, Selection
from servers.deception.domain import AlertKind, Interaction, ReconReport, Severity
from servers.deception.honeytokens import HoneytokenHit, HoneytokenRecord, HoneytokenRegistry
from servers.deception.policies import BanditConfig, SelectionPolicy
from servers.deception.selection_store import SelectionContext
from servers.deception.sessions import Session, SessionBook, SessionEvent, SessionPolicy
from servers.deception.store import DeceptionStore
from servers.mesh import errors
from servers.mesh.storage import Transaction

log = logging.getLogger(__name__)

R = TypeVar("R")
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class ReconOutcome:
    """What LogRecon did."""

    event: SessionEvent
    """The event added to the session's timeline."""
    alert: Alert
    """The alert the event was folded into or opened."""
    hit: HoneytokenHit | None
    """The honeytoken the presented credential is, if it is one."""


class DeceptionBooks:
    """Sessions, alerts, decoy selection and honeytokens, kept in step with the store."""

    def __init__(
        self,
        store: DeceptionStore,
        *,
        decoy_ids: Sequence[str],
        session_policy: SessionPolicy,
        deduplication: DeduplicationPolicy,
        bandit: BanditConfig,
        on_notification: Callable[[], None] = lambda: None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self._decoy_ids = tuple(decoy_ids)
        self._session_policy = session_policy
        self._deduplication = deduplication
        self._bandit = bandit
        self._on_notification = on_notification
        self._clock = clock or (lambda: datetime.now(UTC))
        self.lock = asyncio.Lock()
        """Held by the one change in flight."""
        self.sessions = SessionBook(session_policy, clock=self._clock)
        self.alerts = AlertBook(deduplication)
        self.selector = DecoySelector(self._decoy_ids, bandit)
        self.honeytokens = HoneytokenRegistry()
        self._behind = False
        self._attempted = False
        self._notified = False
        self._recovery: asyncio.Task[None] | None = None

    # --- the change protocol ----------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild every book from the store (at start)."""
        async with self.lock, self.store.database.transaction() as tx:
            await self._load(tx)
            self._behind = False

    async def change(self, run: Callable[[], Awaitable[R]]) -> R:
        """Run `run` as the only change in flight; its work must call `begin(tx)` before changing a book."""
        async with self.lock:
            self._attempted = self._notified = False
            try:
                result = await run()
            except errors.DomainError as error:
                if self._attempted and not isinstance(error, errors.Conflict):
                    self._behind = False  # a refusal comes before any change, after `begin` caught up
                elif self._attempted:
                    await self._recover()
                raise
            except asyncio.CancelledError:
                if self._attempted:
                    self._schedule_recovery()
                raise
            except BaseException:
                if self._attempted:
                    await self._recover()
                raise
            if self._attempted:
                self._behind = False
            if self._notified:
                self._on_notification()
            return result

    async def begin(self, tx: Transaction) -> None:
        """Start one attempt at a change in `tx`: catch up with the store if an earlier attempt failed."""
        if self._behind:
            await self._load(tx)
        self._behind = True
        self._attempted = True

    async def reload(self, tx: Transaction) -> None:
        """Rebuild every book from what `tx` sees (inside a change, after bulk changes to the store)."""
        await self._load(tx)

    async def close(self) -> None:
        """Stop a pending recovery."""
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)

    async def _load(self, tx: Transaction) -> None:
        sessions = SessionBook(self._session_policy, clock=self._clock)
        sessions.restore(*await self.store.activity.load(tx, self._session_policy.max_events_per_session))
        alerts = AlertBook(self._deduplication)
        alerts.restore(await self.store.alerts.load(tx))
        selector = DecoySelector(self._decoy_ids, self._bandit)
        history = await self.store.selections.load(tx, self._bandit.max_pending)
        for bucket, evidence in history.evidence.items():
            engaged = [evidence.get(d, (0.0, 0.0))[0] for d in self._decoy_ids]
            ignored = [evidence.get(d, (0.0, 0.0))[1] for d in self._decoy_ids]
            selector.restore(bucket, engaged, ignored)
        selector.restore_history(history.counts, history.recent, history.draws)
        registry = HoneytokenRegistry(await self.store.honeytokens.load(tx))
        self.sessions, self.alerts, self.selector, self.honeytokens = sessions, alerts, selector, registry

    async def _recover(self) -> None:
        try:
            async with self.store.database.transaction() as tx:
                await self._load(tx)
            self._behind = False
            log.warning("a change to the deception books failed; they were reloaded from the store")
        except Exception:
            log.exception("reloading the deception books failed; the next change retries")

    def _schedule_recovery(self) -> None:
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover_when_free())

    async def _recover_when_free(self) -> None:
        async with self.lock:
            if self._behind:
                await self._recover()

    # --- changes (call inside `change`, after `begin`) --------------------------------------

    async def record_interactions(self, tx: Transaction, interactions: Sequence[Interaction]) -> None:
        """Add decoy interactions to their sources' sessions and alerts, and write them."""
        rows: list[tuple[Interaction, str]] = []
        events: list[SessionEvent] = []
        touched: dict[str, None] = {}
        alerts: dict[str, Alert] = {}
        notifications: list[Notification] = []
        for interaction in interactions:
            event = self.sessions.record_interaction(interaction)
            updates = [self.alerts.observe_interaction(interaction, event.session_id)]
            # A decoy is part of the mesh too: a planted credential tried on one is a leak.
            for credential in interaction.credentials:
                hit = self.honeytokens.match(credential.secret, credential.username)
                if hit is not None:
                    updates.append(self._honeytoken_used(hit, interaction.source_address, event, interaction.decoy_id))
            rows.append((interaction, event.session_id))
            events.append(event)
            touched[event.session_id] = None
            for update in updates:
                alerts[update.alert.alert_id] = update.alert
                notifications += self._notifications(update)
        await self.store.activity.save_interactions(tx, rows)
        await self.store.activity.save_events(tx, events)
        await self.store.activity.save_sessions(tx, [self.sessions.get(s) for s in touched])
        await self.store.alerts.save(tx, alerts.values())
        await self._queue(tx, notifications)

    async def create_session(self, tx: Transaction, source_address: str, labels: Mapping[str, str]) -> Session:
        """Open a session by hand, and write it."""
        session = self.sessions.create_session(source_address, labels)
        await self.store.activity.save_sessions(tx, [session])
        return session

    async def log_recon(
        self,
        tx: Transaction,
        *,
        source_address: str,
        report: ReconReport,
        session_id: str,
        time: datetime | None,
        credential: str,
        credential_fingerprint: str,
    ) -> ReconOutcome:
        """Add another service's report to a session; a presented honeytoken raises a CRITICAL alert."""
        subject = report.claimed_subject.strip()
        if credential:
            hit = self.honeytokens.match(credential, subject)
        elif credential_fingerprint:
            hit = self.honeytokens.match_fingerprint(credential_fingerprint, subject)
        else:
            hit = None
        event = self.sessions.log_recon(source_address, report, session_id=session_id, time=time)
        session = self.sessions.get(event.session_id)
        if hit is not None:
            update = self._honeytoken_used(hit, session.source_address, event)
        else:
            update = self.alerts.observe(
                kind=AlertKind.RECON,
                source_address=session.source_address,
                time=event.time,
                stage=event.stage,
                session_id=event.session_id,
            )
        await self.store.activity.save_events(tx, [event])
        await self.store.activity.save_sessions(tx, [session])
        await self.store.alerts.save(tx, [update.alert])
        await self._queue(tx, self._notifications(update))
        return ReconOutcome(event, update.alert, hit)

    async def select_decoy(
        self,
        tx: Transaction,
        *,
        bucket: str,
        policy: SelectionPolicy,
        seed: int | None,
        context: SelectionContext,
    ) -> Selection:
        """Choose a decoy for a context bucket and log the choice with its seed and draw."""
        selection = self.selector.select(bucket, policy, seed=seed)
        await self.store.selections.save(tx, selection, context)
        return selection

    async def submit_feedback(self, tx: Transaction, selection_id: str, reward: float) -> DecoyStats:
        """Record a selection's reward and write the bucket's evidence after the update."""
        stats = self.selector.submit_feedback(selection_id, reward)
        bucket = self.selector.selection(selection_id).bucket
        engaged, ignored = self.selector.snapshot()[bucket]
        evidence = {d: (e, i) for d, e, i in zip(self.selector.decoy_ids, engaged, ignored, strict=True)}
        await self.store.selections.save_feedback(tx, selection_id, reward, self._clock(), bucket, evidence)
        return stats

    async def register_honeytokens(self, tx: Transaction, records: Iterable[HoneytokenRecord]) -> None:
        """Register honeytokens (registering one again is harmless)."""
        chosen = list(records)
        self.honeytokens.register_all(chosen)
        await self.store.honeytokens.save(tx, chosen)

    # --- internals --------------------------------------------------------------------------

    def _honeytoken_used(
        self, hit: HoneytokenHit, source_address: str, event: SessionEvent, decoy_id: str = ""
    ) -> AlertUpdate:
        log.warning(hit.summary, extra={"session_id": event.session_id, "batch_id": hit.record.batch_id})
        return self.alerts.observe(
            kind=AlertKind.HONEYTOKEN_USED,
            source_address=source_address,
            time=event.time,
            stage=event.stage,
            severity=Severity.CRITICAL,
            decoy_id=decoy_id,
            session_id=event.session_id,
            batch_id=hit.record.batch_id,
            honeytoken_id=hit.record.honeytoken_id,
        )

    @staticmethod
    def _notifications(update: AlertUpdate) -> list[Notification]:
        return [notification_for(update.alert)] if update.notify else []

    async def _queue(self, tx: Transaction, notifications: Sequence[Notification]) -> None:
        if notifications:
            await self.store.alerts.queue(tx, notifications, self._clock())
            self._notified = True
