"""The deception server: live decoys, attacker sessions, alerts, decoy selection, attribution, synthetic data.

`build` opens the store, checks the installation file against it, rebuilds the books, starts
the decoy listeners (real TCP, loopback by default) and returns the servicer with three
background loops: the intake that records decoy interactions, the forwarder that delivers
alerts to the compliance service, and retention.

Honeytokens and the token service: a service that refuses a credential reports it with
LogRecon, kind RECON_KIND_CREDENTIAL_PRESENTED, `report.claimed_subject` = the client id it
was presented with, and `presented_credential_fingerprint` =
`clients.deception.credential_fingerprint(secret)` (hex SHA-256 over a domain tag and
the secret), so the secret never travels. A registered honeytoken then raises a CRITICAL alert
naming the batch it was planted in. `clients.deception.report_presented_credential` does it in
one call.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message

from clients.compliance import ComplianceClient
from servers.deception.alert_forwarding import AlertForwarder
from servers.deception.attribution import AttributionConfig, attribute, session_features
from servers.deception.bandit import ContextBuckets
from servers.deception.batches import SyntheticBatches
from servers.deception.books import DeceptionBooks
from servers.deception.decoys import DecoyFleet
from servers.deception.domain import (
    Protocol,
    ReconKind,
    ReconReport,
    ReconStage,
    Severity,
    offset_cursor,
    parse_source_address,
    require_text,
)
from servers.deception.honeytokens import HoneytokenKind, mint_honeytokens
from servers.deception.installation import Installation, load_or_create_installation
from servers.deception.intake import InteractionIntake
from servers.deception.messages import (
    actor_message,
    alert_message,
    arm_score_message,
    decoy_message,
    enum_member,
    event_message,
    honeytoken_message,
    interaction_message,
    optional_time,
    replay_message,
    session_message,
    stats_message,
    template_message,
)
from servers.deception.policies import BanditConfig, SelectionPolicy
from servers.deception.policy_evaluation import replay
from servers.deception.retention import Retention
from servers.deception.selection_store import SelectionContext
from servers.deception.settings import DeceptionSettings, load_settings
from servers.deception.store import DeceptionStore, seed_digest
from servers.deception.synthetic import SyntheticDataGenerator
from servers.deception.templates import TemplateCatalog
from servers.mesh.config import ConfigError
from servers.mesh.errors import DomainError, InvalidArgument
from servers.mesh.idempotency import RequestLedger
from servers.mesh.pagination import page_request
from servers.mesh.server import Mount, Runtime, Service
from servers.mesh.storage import Transaction
from servers.mesh.timestamps import timestamp
from shieldx.deception.v1 import deception_pb2 as pb
from shieldx.deception.v1 import deception_pb2_grpc

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)
Context = Any  # grpc.aio.ServicerContext

MAX_FEATURES = 32
"""Features accepted in an attacker context."""


async def open_installation(path: Path, store: DeceptionStore, *, accept_new: bool) -> Installation:
    """The installation file at `path`, checked against the one the stored data was recorded with."""
    recorded = await store.installation()
    if recorded is not None and not await asyncio.to_thread(path.exists) and not accept_new:
        raise ConfigError(
            f"deception.installation_file: {path} is missing, but the stored data belongs to the installation "
            f"created {recorded.create_time.isoformat()} (recorded from {recorded.file_path}); restore that file, "
            "or set accept_new_installation to start with new fingerprints"
        )
    try:
        installation = await asyncio.to_thread(load_or_create_installation, path)
    except DomainError as error:
        raise ConfigError(f"deception.installation_file: {path}: {error.message}") from None
    if recorded is None or recorded.seed_digest != seed_digest(installation):
        if recorded is not None:
            if not accept_new:
                raise ConfigError(
                    f"deception.installation_file: {path} is not the installation the stored data belongs to "
                    f"(created {recorded.create_time.isoformat()}); restore it, or set accept_new_installation"
                )
            log.warning("deception installation replaced by %s: decoys now present new fingerprints", path)
        await store.record_installation(installation, str(path), datetime.now(UTC))
    return installation


async def build(runtime: Runtime) -> Service:
    """The deception service: store, installation, books, live decoys, servicer and background loops."""
    settings = load_settings(runtime.config)
    database = await runtime.database("servers.deception.migrations")
    store = DeceptionStore(database)
    installation = await open_installation(
        settings.installation_path(runtime.config), store, accept_new=settings.accept_new_installation
    )
    catalog = TemplateCatalog(installation)
    decoys = settings.decoy_configs()
    forwarder = AlertForwarder(
        store.alerts, ComplianceClient(runtime.channel("compliance")), settings.forwarding, registry=runtime.registry
    )
    books = DeceptionBooks(
        store,
        decoy_ids=[d.decoy_id for d in decoys],
        session_policy=settings.session_policy(),
        deduplication=settings.deduplication(),
        bandit=settings.bandit,
        on_notification=forwarder.wake,
    )
    await books.load()
    intake = InteractionIntake(
        books, capacity=settings.intake_queue_size, batch_size=settings.intake_batch_size, registry=runtime.registry
    )
    fleet = DecoyFleet(catalog, intake.offer, limits=settings.limits)
    await fleet.start(decoys)
    ledger = RequestLedger(database, "shieldx.deception.v1")
    batches = SyntheticBatches(books, ledger, SyntheticDataGenerator(), registry=runtime.registry)
    servicer = DeceptionServicer(settings, catalog, fleet, books, ledger, batches)
    retention = Retention(books, ledger, settings.retention)

    async def close() -> None:
        await fleet.stop()  # open connections end and are recorded first
        await intake.flush()
        await books.close()

    return Service(
        mounts=[Mount.of(pb, deception_pb2_grpc, "DeceptionService", servicer=servicer)],
        tasks=[intake.run, forwarder.run, retention.run],
        closers=[close],
    )


class DeceptionServicer(deception_pb2_grpc.DeceptionServiceServicer):
    """The RPCs: parse the request, call the books or the domain, build the response."""

    def __init__(
        self,
        settings: DeceptionSettings,
        catalog: TemplateCatalog,
        fleet: DecoyFleet,
        books: DeceptionBooks,
        ledger: RequestLedger,
        batches: SyntheticBatches,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._fleet = fleet
        self._books = books
        self._ledger = ledger
        self._batches = batches
        self._default_policy = settings.selection_policy()
        self._buckets = ContextBuckets()
        self._protocols = {listener.decoy_id: listener.config.protocol for listener in fleet.decoys()}

    async def _mutate(
        self, method: str, request: Message, response: type[R], work: Callable[[Transaction], Awaitable[R]]
    ) -> R:
        """Run `work` once per request id, as the only change to the books in flight."""

        async def attempt(tx: Transaction) -> R:
            await self._books.begin(tx)
            return await work(tx)

        return await self._books.change(lambda: self._ledger.execute(method, request, response, attempt))

    # --- templates and decoys ---------------------------------------------------------------

    async def ListTemplates(self, request: pb.ListTemplatesRequest, context: Context) -> pb.ListTemplatesResponse:
        protocol = enum_member(Protocol, request.protocol, "protocol") if request.protocol else None
        page = page_request(request.page_size, request.page_token, {"protocol": int(protocol or 0)})
        templates = [t for t in self._catalog.all() if protocol is None or t.protocol is protocol]
        start = offset_cursor(page.cursor, len(templates))
        chosen = templates[start : start + page.size]
        end = start + len(chosen)
        now = datetime.now(UTC)
        return pb.ListTemplatesResponse(
            templates=[template_message(t, now) for t in chosen],
            next_page_token=page.next_token({"offset": end} if end < len(templates) else None),
        )

    async def GetTemplate(self, request: pb.GetTemplateRequest, context: Context) -> pb.GetTemplateResponse:
        template = self._catalog.get(require_text(request.template_id, "template_id", required=True, limit=64))
        return pb.GetTemplateResponse(template=template_message(template, datetime.now(UTC)))

    async def ListDecoys(self, request: pb.ListDecoysRequest, context: Context) -> pb.ListDecoysResponse:
        page = page_request(request.page_size, request.page_token)
        listeners = self._fleet.decoys()
        start = offset_cursor(page.cursor, len(listeners))
        chosen = listeners[start : start + page.size]
        end = start + len(chosen)
        return pb.ListDecoysResponse(
            decoys=[decoy_message(listener) for listener in chosen],
            next_page_token=page.next_token({"offset": end} if end < len(listeners) else None),
        )

    async def ListInteractions(
        self, request: pb.ListInteractionsRequest, context: Context
    ) -> pb.ListInteractionsResponse:
        decoy_id = require_text(request.decoy_id, "decoy_id", limit=64)
        source = parse_source_address(request.source_address) if request.source_address.strip() else ""
        stage = enum_member(ReconStage, request.stage, "stage") if request.stage else None
        filters = {"decoy_id": decoy_id, "source_address": source, "stage": int(stage or 0)}
        page = page_request(request.page_size, request.page_token, filters)
        if page.cursor is not None and not _is_time_cursor(page.cursor):
            raise InvalidArgument("page_token", "is not a token this service issued")
        found, cursor = await self._books.store.activity.list_interactions(
            page, decoy_id=decoy_id, source_address=source, stage=stage
        )
        return pb.ListInteractionsResponse(
            interactions=[interaction_message(i, session_id) for i, session_id in found],
            next_page_token=page.next_token(cursor),
        )

    # --- sessions and alerts ----------------------------------------------------------------

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> pb.CreateSessionResponse:
        labels = dict(request.labels)

        async def work(tx: Transaction) -> pb.CreateSessionResponse:
            session = await self._books.create_session(tx, request.source_address, labels)
            return pb.CreateSessionResponse(session=session_message(session))

        return await self._mutate("CreateSession", request, pb.CreateSessionResponse, work)

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.GetSessionResponse:
        session_id = require_text(request.session_id, "session_id", required=True, limit=128)
        session = self._books.sessions.get(session_id)
        events, token = self._books.sessions.timeline(session_id, request.page_size, request.page_token)
        return pb.GetSessionResponse(
            session=session_message(session), events=[event_message(e) for e in events], next_page_token=token
        )

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Context) -> pb.ListSessionsResponse:
        min_stage = enum_member(ReconStage, request.min_stage, "min_stage") if request.min_stage else None
        sessions, token = self._books.sessions.list_sessions(
            request.page_size, request.page_token, source_address=request.source_address, min_stage=min_stage
        )
        return pb.ListSessionsResponse(sessions=[session_message(s) for s in sessions], next_page_token=token)

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Context) -> pb.ListAlertsResponse:
        min_severity = enum_member(Severity, request.min_severity, "min_severity") if request.min_severity else None
        alerts, token = self._books.alerts.list_alerts(
            request.page_size, request.page_token, source_address=request.source_address, min_severity=min_severity
        )
        return pb.ListAlertsResponse(alerts=[alert_message(a) for a in alerts], next_page_token=token)

    async def LogRecon(self, request: pb.LogReconRequest, context: Context) -> pb.LogReconResponse:
        if not request.HasField("report"):
            raise InvalidArgument("report", "must be set")
        given = request.report
        report = ReconReport(
            kind=enum_member(ReconKind, given.kind, "report.kind"),
            reporting_service=given.reporting_service,
            method=given.method,
            detail=given.detail,
            claimed_subject=given.claimed_subject,
        )
        time = optional_time(request, "time")
        fingerprint = request.presented_credential_fingerprint.strip().lower()
        if request.presented_credential and fingerprint:
            raise InvalidArgument("presented_credential_fingerprint", "set the credential or its fingerprint, not both")
        if fingerprint and (len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint)):
            raise InvalidArgument("presented_credential_fingerprint", "must be 64 hex digits (a SHA-256)")

        async def work(tx: Transaction) -> pb.LogReconResponse:
            outcome = await self._books.log_recon(
                tx,
                source_address=request.source_address,
                report=report,
                session_id=request.session_id,
                time=time,
                credential=request.presented_credential,
                credential_fingerprint=fingerprint,
            )
            return pb.LogReconResponse(
                event=event_message(outcome.event),
                session_id=outcome.event.session_id,
                alert=alert_message(outcome.alert),
                honeytoken_matched=outcome.hit is not None,
            )

        return await self._mutate("LogRecon", request, pb.LogReconResponse, work)

    # --- decoy selection --------------------------------------------------------------------

    async def SelectDecoy(self, request: pb.SelectDecoyRequest, context: Context) -> pb.SelectDecoyResponse:
        policy = enum_member(SelectionPolicy, request.policy, "policy", default=self._default_policy)
        seed = request.seed if request.HasField("seed") else None
        given = request.context
        source = parse_source_address(given.source_address, "context.source_address") if given.source_address else ""
        features = _features(given.features)
        stage = enum_member(ReconStage, given.stage, "context.stage") if given.stage else None
        session_id = require_text(given.session_id, "context.session_id", limit=128)
        if session_id:
            session = self._books.sessions.get(session_id)
            if source and session.source_address != source:
                raise InvalidArgument("context.session_id", "belongs to a different source_address")
            stage = stage or session.stage
        bucket = self._buckets.key(stage.name.lower() if stage else "", features)

        async def work(tx: Transaction) -> pb.SelectDecoyResponse:
            selection = await self._books.select_decoy(
                tx,
                bucket=bucket,
                policy=policy,
                seed=seed,
                context=SelectionContext(source, session_id, features),
            )
            return pb.SelectDecoyResponse(
                selection_id=selection.selection_id,
                decoy=decoy_message(self._fleet.get(selection.decoy_id)),
                policy=pb.SelectionPolicy.ValueType(selection.policy.value),
                seed=selection.seed,
                draw=selection.draw,
                scores=[arm_score_message(s) for s in selection.scores],
                select_time=timestamp(datetime.fromtimestamp(selection.select_time, UTC)),
                propensity=selection.propensity,
                context_bucket=selection.bucket,
            )

        return await self._mutate("SelectDecoy", request, pb.SelectDecoyResponse, work)

    async def SubmitFeedback(self, request: pb.SubmitFeedbackRequest, context: Context) -> pb.SubmitFeedbackResponse:
        selection_id = require_text(request.selection_id, "selection_id", required=True, limit=128)
        reward = request.reward if request.HasField("reward") else (1.0 if request.engaged else 0.0)

        async def work(tx: Transaction) -> pb.SubmitFeedbackResponse:
            stats = await self._books.submit_feedback(tx, selection_id, reward)
            return pb.SubmitFeedbackResponse(stats=stats_message(stats, self._protocols))

        return await self._mutate("SubmitFeedback", request, pb.SubmitFeedbackResponse, work)

    async def GetDecoyGraph(self, request: pb.GetDecoyGraphRequest, context: Context) -> pb.GetDecoyGraphResponse:
        selector = self._books.selector
        return pb.GetDecoyGraphResponse(
            decoys=[stats_message(s, self._protocols) for s in selector.stats()],
            total_selections=selector.total_selections,
            discount=selector.config.discount,
        )

    async def ReplayPolicy(self, request: pb.ReplayPolicyRequest, context: Context) -> pb.ReplayPolicyResponse:
        policy = enum_member(SelectionPolicy, request.policy, "policy", default=SelectionPolicy.THOMPSON)
        seed = request.seed if request.HasField("seed") else secrets.randbits(64)
        config = self._books.selector.config
        if request.discount:
            config = BanditConfig(
                discount=request.discount,
                prior_alpha=config.prior_alpha,
                prior_beta=config.prior_beta,
                exploration=config.exploration,
                max_buckets=config.max_buckets,
            )
            config.validate()
        if request.max_rounds < 0:
            raise InvalidArgument("max_rounds", "must not be negative")
        start, end = optional_time(request, "start_time"), optional_time(request, "end_time")
        logged = await self._books.store.selections.logged_rounds(start, end, self._settings.replay_max_logged_rounds)
        report = await asyncio.to_thread(
            replay,
            logged,
            self._books.selector.decoy_ids,
            policy,
            config=config,
            seed=seed,
            max_rounds=request.max_rounds,
        )
        return replay_message(report)

    # --- attribution ------------------------------------------------------------------------

    async def GetAttribution(self, request: pb.GetAttributionRequest, context: Context) -> pb.GetAttributionResponse:
        threshold = request.similarity_threshold or self._settings.attribution_threshold
        start, end = optional_time(request, "start_time"), optional_time(request, "end_time")
        book = self._books.sessions
        chosen = [
            s
            for s in book.all_sessions()
            if (start is None or s.last_event_time >= start) and (end is None or s.create_time < end)
        ]
        features = [session_features(s, book.events(s.session_id)) for s in chosen]
        actors = await asyncio.to_thread(attribute, features, AttributionConfig(similarity_threshold=threshold))
        return pb.GetAttributionResponse(
            actors=[actor_message(a) for a in actors], session_count=len(features), similarity_threshold=threshold
        )

    # --- synthetic data and honeytokens -----------------------------------------------------

    async def GenerateSyntheticData(
        self, request: pb.GenerateSyntheticDataRequest, context: Context
    ) -> AsyncIterator[pb.GenerateSyntheticDataResponse]:
        batch = await self._batches.start(request)
        async for response in self._batches.stream(batch):
            yield response

    async def CreateHoneytokens(
        self, request: pb.CreateHoneytokensRequest, context: Context
    ) -> pb.CreateHoneytokensResponse:
        kind = enum_member(HoneytokenKind, request.kind, "kind", default=HoneytokenKind.API_KEY)
        batch_id = require_text(request.batch_id, "batch_id", limit=64)
        if batch_id and not (batch_id.isascii() and batch_id.isprintable()):
            raise InvalidArgument("batch_id", "must be printable ASCII")

        async def work(tx: Transaction) -> pb.CreateHoneytokensResponse:
            tokens = mint_honeytokens(
                kind,
                request.count,
                batch_id=batch_id or "hb_" + secrets.token_hex(8),
                rng=np.random.default_rng(secrets.randbits(128)),
                now=datetime.now(UTC),
            )
            await self._books.register_honeytokens(tx, [t.record() for t in tokens])
            return pb.CreateHoneytokensResponse(
                honeytokens=[honeytoken_message(t) for t in tokens], batch_id=tokens[0].batch_id
            )

        return await self._mutate("CreateHoneytokens", request, pb.CreateHoneytokensResponse, work)


def _is_time_cursor(cursor: Any) -> bool:
    return (
        isinstance(cursor.get("t"), int) and not isinstance(cursor.get("t"), bool) and isinstance(cursor.get("id"), str)
    )


def _features(given: Any) -> dict[str, str]:
    if len(given) > MAX_FEATURES:
        raise InvalidArgument("context.features", f"at most {MAX_FEATURES} features")
    features: dict[str, str] = {}
    for key, value in sorted(given.items()):
        name = require_text(key, "context.features", required=True, limit=63)
        features[name] = require_text(value, f"context.features[{name}]", limit=256)
    return features
