"""The credits server: `CreditsService` over the event-sourced store, and its background loops.

The servicer parses a request, hands the domain's decision to the store (which records it
once per request id) or asks the queries, and builds the response. Background loops release
expired reservations, sign the ledger head and measure the projection lag.

By default the ledger is the server's own store (SQLite, or PostgreSQL when configured). With
`credits.topology` on, it follows the sharding server's topology instead: each account lives
on the PostgreSQL shard the ring names (`shards.py`), transfers between shards use two-phase
commit coordinated from the server's own store (`crossshard.py`, `twophase.py`), and a
recovery loop finishes in-doubt prepared transactions at start and every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message
from opentelemetry import trace

from clients.sharding import ShardingClient
from servers.credits import messages
from servers.credits.account import AccountState
from servers.credits.alerts import AlertFeed
from servers.credits.alertstreams import AlertStream, ShardAlerts, StoreAlerts
from servers.credits.commands import (
    MAX_REFERENCE_LENGTH,
    AccountCommand,
    CancelReservation,
    CommitReservation,
    Consume,
    LedgerLimits,
    Purchase,
    Reserve,
    SetThreshold,
    Transfer,
    validate_identifier,
    validate_transfer,
)
from servers.credits.crossshard import CrossShardTransfers
from servers.credits.domain import Decision, TransferDecision, account_not_found, decide, decide_transfer
from servers.credits.events import ReservationCancelled, ReservationCommitted, Reserved
from servers.credits.eventstore import TransactionQuery
from servers.credits.metrics import LedgerMetrics, measured
from servers.credits.payment_refs import (
    PaymentReferenceCipher,
    PaymentReferenceUnreadable,
)
from servers.credits.placement import AccountPlacement, Shard
from servers.credits.queries import LedgerQueries
from servers.credits.reports import UsagePeriod, UsageReport
from servers.credits.settings import CreditsSettings
from servers.credits.shards import TopologyPlacement
from servers.credits.signing import HeadSigner
from servers.credits.store import CreditsStore
from servers.credits.twophase import CoordinatorLog, CrashPoint, TransferCoordinator
from servers.mesh.background import repeat
from servers.mesh.config import service_settings
from servers.mesh.errors import InvalidArgument
from servers.mesh.logs import current_trace_ids
from servers.mesh.pagination import PageRequest, page_request
from servers.mesh.server import Mount, Runtime, Service
from servers.mesh.text import check_free_text
from servers.mesh.timestamps import timestamp
from servers.sharding.follower import TopologyFollower
from shieldx.credits.v1 import credits_pb2, credits_pb2_grpc

R = TypeVar("R", bound=Message)
log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

_PERIODS = {
    credits_pb2.USAGE_PERIOD_DAY: UsagePeriod.DAY,
    credits_pb2.USAGE_PERIOD_WEEK: UsagePeriod.WEEK,
    credits_pb2.USAGE_PERIOD_MONTH: UsagePeriod.MONTH,
}


class CreditsServicer(credits_pb2_grpc.CreditsServiceServicer):
    """Every RPC of `shieldx.credits.v1.CreditsService`."""

    def __init__(
        self,
        store: CreditsStore,
        queries: LedgerQueries,
        alerts: AlertStream,
        cipher: PaymentReferenceCipher,
        signer: HeadSigner,
        metrics: LedgerMetrics,
        limits: LedgerLimits,
    ) -> None:
        self.store = store
        self.queries = queries
        self.alerts = alerts
        self.cipher = cipher
        self.signer = signer
        self.metrics = metrics
        self.limits = limits

    # -- changes ---------------------------------------------------------------------------------

    @measured("purchase")
    async def Purchase(self, request: credits_pb2.PurchaseRequest, context: Any) -> credits_pb2.PurchaseResponse:
        validate_identifier(request.account_id, "account_id")
        command = Purchase(request.account_id, request.amount, self.cipher.seal(request.payment_reference))

        def respond(decision: Decision, state: AccountState) -> credits_pb2.PurchaseResponse:
            return credits_pb2.PurchaseResponse(balance=messages.balance(state), event_version=decision.primary.version)

        return await self._execute("Purchase", request, credits_pb2.PurchaseResponse, command, respond)

    @measured("consume")
    async def Consume(self, request: credits_pb2.ConsumeRequest, context: Any) -> credits_pb2.ConsumeResponse:
        validate_identifier(request.account_id, "account_id")
        command = Consume(request.account_id, request.amount, request.description, request.reference)

        def respond(decision: Decision, state: AccountState) -> credits_pb2.ConsumeResponse:
            return credits_pb2.ConsumeResponse(balance=messages.balance(state), event_version=decision.primary.version)

        return await self._execute("Consume", request, credits_pb2.ConsumeResponse, command, respond)

    @measured("reserve")
    async def Reserve(self, request: credits_pb2.ReserveRequest, context: Any) -> credits_pb2.ReserveResponse:
        validate_identifier(request.account_id, "account_id")
        expiry = request.WhichOneof("expiry")
        command = Reserve(
            request.account_id,
            uuid.uuid4().hex,
            request.amount,
            expire_time=messages.instant(request.expire_time, "expire_time") if expiry == "expire_time" else None,
            ttl=messages.lifetime(request.ttl, "ttl") if expiry == "ttl" else None,
            description=request.description,
        )

        def respond(decision: Decision, state: AccountState) -> credits_pb2.ReserveResponse:
            made = decision.primary
            assert isinstance(made, Reserved)
            return credits_pb2.ReserveResponse(
                reservation=messages.reservation_of(made),
                balance=messages.balance(state),
                event_version=made.version,
            )

        return await self._execute("Reserve", request, credits_pb2.ReserveResponse, command, respond)

    @measured("commit_reservation")
    async def CommitReservation(
        self, request: credits_pb2.CommitReservationRequest, context: Any
    ) -> credits_pb2.CommitReservationResponse:
        validate_identifier(request.account_id, "account_id")
        amount = request.amount if request.HasField("amount") else None
        command = CommitReservation(request.account_id, request.reservation_id, amount)

        def respond(decision: Decision, state: AccountState) -> credits_pb2.CommitReservationResponse:
            committed = decision.primary
            assert isinstance(committed, ReservationCommitted)
            return credits_pb2.CommitReservationResponse(
                committed_amount=committed.committed,
                released_amount=committed.released,
                balance=messages.balance(state),
                event_version=committed.version,
            )

        return await self._execute(
            "CommitReservation", request, credits_pb2.CommitReservationResponse, command, respond
        )

    @measured("cancel_reservation")
    async def CancelReservation(
        self, request: credits_pb2.CancelReservationRequest, context: Any
    ) -> credits_pb2.CancelReservationResponse:
        validate_identifier(request.account_id, "account_id")
        command = CancelReservation(request.account_id, request.reservation_id)

        def respond(decision: Decision, state: AccountState) -> credits_pb2.CancelReservationResponse:
            cancelled = decision.primary
            assert isinstance(cancelled, ReservationCancelled)
            return credits_pb2.CancelReservationResponse(
                released_amount=cancelled.released, balance=messages.balance(state), event_version=cancelled.version
            )

        return await self._execute(
            "CancelReservation", request, credits_pb2.CancelReservationResponse, command, respond
        )

    @measured("set_threshold")
    async def SetThreshold(
        self, request: credits_pb2.SetThresholdRequest, context: Any
    ) -> credits_pb2.SetThresholdResponse:
        validate_identifier(request.account_id, "account_id")
        command = SetThreshold(request.account_id, request.threshold)

        def respond(decision: Decision, state: AccountState) -> credits_pb2.SetThresholdResponse:
            return credits_pb2.SetThresholdResponse(
                balance=messages.balance(state),
                event_version=decision.primary.version,
                alert_fired=decision.alert_fired,
            )

        return await self._execute("SetThreshold", request, credits_pb2.SetThresholdResponse, command, respond)

    @measured("transfer")
    async def Transfer(self, request: credits_pb2.TransferRequest, context: Any) -> credits_pb2.TransferResponse:
        command = Transfer(
            uuid.uuid4().hex, request.from_account_id, request.to_account_id, request.amount, request.description
        )
        validate_transfer(command, self.limits)
        trace_id = _trace_id()

        def decision(source: AccountState, destination: AccountState, now: datetime) -> TransferDecision:
            return decide_transfer(source, destination, command, now=now, trace_id=trace_id, limits=self.limits)

        def respond(
            decided: TransferDecision, source: AccountState, destination: AccountState
        ) -> credits_pb2.TransferResponse:
            return credits_pb2.TransferResponse(
                transfer_id=command.transfer_id,
                from_balance=messages.balance(source),
                to_balance=messages.balance(destination),
                from_event_version=decided.outgoing.primary.version,
                to_event_version=decided.incoming.primary.version,
            )

        return await self.store.transfer(
            "Transfer",
            request,
            credits_pb2.TransferResponse,
            command.from_account_id,
            command.to_account_id,
            decision,
            respond,
        )

    async def _execute(
        self,
        method: str,
        request: Any,
        response_type: type[R],
        command: AccountCommand,
        respond: Callable[[Decision, AccountState], R],
    ) -> R:
        trace_id = _trace_id()

        def decision(state: AccountState, now: datetime) -> Decision:
            return decide(state, command, now=now, trace_id=trace_id, limits=self.limits)

        return await self.store.execute(method, request, response_type, command.account_id, decision, respond)

    # -- reads -----------------------------------------------------------------------------------

    @measured("get_balance")
    async def GetBalance(self, request: credits_pb2.GetBalanceRequest, context: Any) -> credits_pb2.GetBalanceResponse:
        account_id = request.account_id
        validate_identifier(account_id, "account_id")
        point = request.WhichOneof("as_of")
        if point is None:
            row = await self.queries.balance(account_id)
            if row is None:
                raise account_not_found(account_id)
            return credits_pb2.GetBalanceResponse(balance=messages.balance(row))
        if point == "as_of_version":
            if request.as_of_version < 1:
                raise InvalidArgument("as_of_version", "must be 1 or more")
            state = await self.queries.state_at(account_id, version=request.as_of_version)
        else:
            state = await self.queries.state_at(account_id, moment=messages.instant(request.as_of_time, "as_of_time"))
        return credits_pb2.GetBalanceResponse(balance=messages.balance(state))

    @measured("list_transactions")
    async def ListTransactions(
        self, request: credits_pb2.ListTransactionsRequest, context: Any
    ) -> credits_pb2.ListTransactionsResponse:
        if request.account_id:
            validate_identifier(request.account_id, "account_id")
        types = sorted(set(request.types))
        if any(number not in messages.TRANSACTION_TYPES for number in types):
            raise InvalidArgument("types", "must hold known transaction types only")
        start = messages.instant(request.start_time, "start_time") if request.HasField("start_time") else None
        end = messages.instant(request.end_time, "end_time") if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end_time", "must be after start_time")
        check_free_text(request.reference, "reference", MAX_REFERENCE_LENGTH)
        query = TransactionQuery(
            account_id=request.account_id,
            types=tuple(messages.TRANSACTION_TYPES[number] for number in types),
            start_time=start,
            end_time=end,
            consume_reference=request.reference,
            purchase_lookups=self.cipher.lookups(request.reference) if request.reference else (),
        )
        filters = {
            "account_id": request.account_id,
            "types": types,
            "start": start,
            "end": end,
            "reference": request.reference,
        }
        page = page_request(request.page_size, request.page_token, filters)
        after = _cursor(page, ("a", str), ("v", int))
        rows = await self.queries.transactions(query, (after[0], after[1]) if after else None, page.size + 1)
        last = rows[page.size - 1] if len(rows) > page.size else None
        return credits_pb2.ListTransactionsResponse(
            transactions=[messages.transaction(row, self._open_reference) for row in rows[: page.size]],
            next_page_token=page.next_token(None if last is None else {"a": last.account_id, "v": last.version}),
        )

    @measured("list_reservations")
    async def ListReservations(
        self, request: credits_pb2.ListReservationsRequest, context: Any
    ) -> credits_pb2.ListReservationsResponse:
        if request.account_id:
            validate_identifier(request.account_id, "account_id")
        numbers = sorted(set(request.states))
        if any(number not in messages.RESERVATION_STATES for number in numbers):
            raise InvalidArgument("states", "must hold known reservation states only")
        page = page_request(
            request.page_size, request.page_token, {"account_id": request.account_id, "states": numbers}
        )
        after = _cursor(page, ("s", str), ("p", int))
        rows = await self.queries.reservations(
            request.account_id,
            [messages.RESERVATION_STATES[number] for number in numbers],
            (after[0], after[1]) if after else None,
            page.size + 1,
        )
        last = rows[page.size - 1] if len(rows) > page.size else None
        return credits_pb2.ListReservationsResponse(
            reservations=[messages.reservation(row) for _, row in rows[: page.size]],
            next_page_token=page.next_token(None if last is None else {"s": last[0], "p": last[1].position}),
        )

    async def WatchAlerts(
        self, request: credits_pb2.WatchAlertsRequest, context: Any
    ) -> AsyncIterator[credits_pb2.WatchAlertsResponse]:
        if request.account_id:
            validate_identifier(request.account_id, "account_id")
        async for alert, token in self.alerts.watch(request.account_id, request.resume_token):
            yield credits_pb2.WatchAlertsResponse(alert=messages.alert(alert), resume_token=token)

    @measured("get_usage_report")
    async def GetUsageReport(
        self, request: credits_pb2.GetUsageReportRequest, context: Any
    ) -> credits_pb2.GetUsageReportResponse:
        if request.account_id:
            validate_identifier(request.account_id, "account_id")
        if request.period != credits_pb2.USAGE_PERIOD_UNSPECIFIED and request.period not in _PERIODS:
            raise InvalidArgument("period", "is not a known usage period")
        report = UsageReport(
            messages.instant(request.start_time, "start_time") if request.HasField("start_time") else None,
            messages.instant(request.end_time, "end_time") if request.HasField("end_time") else None,
            _PERIODS.get(request.period),
        )
        filters = {
            "account_id": request.account_id,
            "start": report.start_time,
            "end": report.end_time,
            "period": str(report.period),
        }
        page = page_request(request.page_size, request.page_token, filters)
        after = _cursor(page, ("a", str), ("s", str))
        await self.queries.add_usage(report, request.account_id)
        rows = report.rows()
        if after is not None:
            rows = [row for row in rows if (row.account_id, row.period_start.isoformat()) > after]
        last = rows[page.size - 1] if len(rows) > page.size else None
        return credits_pb2.GetUsageReportResponse(
            rows=[
                credits_pb2.UsageRow(
                    account_id=row.account_id,
                    period_start_time=timestamp(row.period_start),
                    period_end_time=timestamp(row.period_end),
                    consumed=row.consumed,
                    operations=row.operations,
                )
                for row in rows[: page.size]
            ],
            next_page_token=page.next_token(
                None if last is None else {"a": last.account_id, "s": last.period_start.isoformat()}
            ),
        )

    @measured("verify_audit_chain")
    async def VerifyAuditChain(
        self, request: credits_pb2.VerifyAuditChainRequest, context: Any
    ) -> credits_pb2.VerifyAuditChainResponse:
        if request.account_id:
            validate_identifier(request.account_id, "account_id")
        report = await self.queries.verify_chain(request.account_id)
        if request.account_id and report.events_checked == 0:
            raise account_not_found(request.account_id)
        response = credits_pb2.VerifyAuditChainResponse(
            ok=report.ok, events_checked=report.events_checked, accounts_checked=report.accounts_checked
        )
        if report.mismatch is not None:
            log.warning(
                "audit chain mismatch",
                extra={
                    "account_id": report.mismatch.account_id,
                    "version": report.mismatch.version,
                    "kind": str(report.mismatch.kind),
                },
            )
            response.first_mismatch.CopyFrom(messages.mismatch(report.mismatch))
        return response

    @measured("get_audit_head")
    async def GetAuditHead(
        self, request: credits_pb2.GetAuditHeadRequest, context: Any
    ) -> credits_pb2.GetAuditHeadResponse:
        signed = await self.queries.latest_signed_head() or await self.queries.sign_head(self.signer)
        head = signed.head
        return credits_pb2.GetAuditHeadResponse(
            digest=head.digest,
            signature=signed.signature,
            public_key=signed.public_key,
            sign_time=timestamp(head.taken_at),
            account_count=head.account_count,
            event_count=head.event_count,
        )

    def _open_reference(self, ciphertext: str) -> str:
        try:
            return self.cipher.open(ciphertext)
        except PaymentReferenceUnreadable as error:
            # The ledger stays listable when a retired key was dropped from the config.
            log.warning("payment reference cannot be opened", extra={"error": str(error)})
            return ""


def _trace_id() -> str:
    return current_trace_ids()[0]


def _cursor(page: PageRequest, *fields: tuple[str, type]) -> tuple[Any, ...] | None:
    """The typed fields of a page cursor this service issued (None on the first page)."""
    if page.cursor is None:
        return None
    values = tuple(page.cursor.get(name) for name, _ in fields)
    if any(type(value) is not kind for value, (_, kind) in zip(values, fields, strict=True)):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return values


# -- background loops ------------------------------------------------------------------------------


def every(seconds: float, name: str, action: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
    """A loop running `action` every `seconds`, surviving failures with backoff, until cancelled.

    Cancellation waits for the round in progress: a database transaction cut off between its
    last statement and its commit can leave the connection idle in transaction, holding locks.
    """

    async def traced() -> None:
        with tracer.start_as_current_span(f"credits.{name}"):
            await action()

    async def loop() -> None:
        await repeat(name, traced, seconds, max_backoff=300.0, finish_round_on_cancel=True)

    loop.__qualname__ = f"credits.{name}"
    return loop


async def build(runtime: Runtime) -> Service:
    """The credits service: store, servicer and background loops (on the topology if configured)."""
    settings = service_settings(CreditsSettings, runtime.config)
    settings.check()
    data_dir = runtime.config.data_path
    runtime.posture.protections.update({"payment_references_encrypted": True, "audit_chain_signed": True})
    runtime.posture.retention_seconds["events"] = 0  # the ledger's events are never deleted
    if settings.topology:
        account_storage = await sharded_storage(runtime, settings)
    else:
        database = await runtime.database("servers.credits.migrations")
        account_storage = AccountStorage(AccountPlacement([Shard.of("default", database)]))
    # Keys every replica must share live in the home database, sealed under the KEK.
    vault = await runtime.vault(account_storage.placement.home)
    cipher = await settings.payment_reference_cipher(vault, data_dir)
    if settings.head_signing_key_file:
        signer = await asyncio.to_thread(HeadSigner.from_file, Path(settings.head_signing_key_file))
    else:
        signer = await HeadSigner.shared(vault, data_dir / "credits-head-signing.key")
    feed: AlertStream
    if account_storage.placement.sharded:
        feed = ShardAlerts(account_storage.placement, poll_seconds=settings.alert_poll_seconds)
    else:
        feed = StoreAlerts(AlertFeed(account_storage.placement.home, poll_seconds=settings.alert_poll_seconds))
    store = CreditsStore(
        account_storage.placement,
        snapshot_every=settings.snapshot_every,
        cache_size=settings.account_cache_size,
        on_alert=feed.notify,
        group_commit=settings.group_commit,
        cache_gate=runtime.cache_gate("credits_account"),
    )
    if account_storage.coordinator is not None:
        store.cross_shard = CrossShardTransfers(store, account_storage.coordinator)
    queries = LedgerQueries(account_storage.placement, store.clock)
    metrics = LedgerMetrics(runtime.registry)
    servicer = CreditsServicer(store, queries, feed, cipher, signer, metrics, settings.limits())

    async def release_expired() -> None:
        await store.expire_due(trace_id=_trace_id())

    async def sign_head() -> None:
        await queries.sign_head(signer)

    async def measure_lag() -> None:
        metrics.projection_lag.set(await queries.projection_lag())

    return Service(
        mounts=[Mount.of(credits_pb2, credits_pb2_grpc, "CreditsService", servicer=servicer)],
        tasks=[
            *account_storage.tasks,
            every(settings.sweep_interval_seconds, "release_expired", release_expired),
            every(settings.head_sign_interval_seconds, "sign_head", sign_head),
            every(settings.lag_interval_seconds, "measure_lag", measure_lag),
        ],
        closers=[store.close, *account_storage.closers],
    )


@dataclass
class AccountStorage:
    """Where the accounts are stored: their placement, and what running the ledger on shards needs."""

    placement: AccountPlacement
    coordinator: TransferCoordinator | None = None
    tasks: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def sharded_storage(runtime: Runtime, settings: CreditsSettings) -> AccountStorage:
    """Accounts on the sharding topology: follower, shard pools, coordinator log and recovery loop."""
    home = await runtime.database("servers.credits.migrations", "servers.credits.coordinator_migrations")
    follower = TopologyFollower(ShardingClient(runtime.channel("sharding")))
    placement = TopologyPlacement(
        follower, home, pool_size=settings.shard_pool_size, read_replicas=settings.read_replicas
    )
    coordinator = TransferCoordinator(
        CoordinatorLog(home),
        placement,
        runtime.registry,
        in_doubt_after_seconds=settings.in_doubt_after_seconds,
        decision_retention_seconds=settings.decision_retention_seconds,
        crash_point=CrashPoint(settings.two_phase_crash_point),
    )
    await coordinator.start()
    if coordinator.crash_point is not CrashPoint.NONE:
        log.warning(
            "two-phase crash point %r is set: cross-shard transfers will stop there", settings.two_phase_crash_point
        )

    async def recover() -> None:
        await coordinator.recover()

    recover_every = every(settings.two_phase_recovery_interval_seconds, "recover_transfers", recover)

    async def recover_transfers() -> None:
        # The first pass runs as soon as every shard of the first topology is reachable.
        await placement.wait_synced(1)
        await recover_every()

    recover_transfers.__qualname__ = "credits.recover_transfers"
    follow_topology = follower.run
    open_shards = placement.run
    return AccountStorage(
        placement,
        coordinator,
        tasks=[follow_topology, open_shards, recover_transfers],
        closers=[coordinator.close, placement.close],
    )
