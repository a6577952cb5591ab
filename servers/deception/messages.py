"""Conversions between the deception domain and the contract's messages (both directions, at the edge)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from servers.deception.alerts import Alert
from servers.deception.attribution import ActorGroup
from servers.deception.bandit import DecoyStats
from servers.deception.decoys import DecoyListener
from servers.deception.domain import Interaction, Protocol
from servers.deception.fingerprints import (
    FtpFingerprint,
    HttpFingerprint,
    MysqlFingerprint,
    RedisFingerprint,
    SmtpFingerprint,
    SshFingerprint,
)
from servers.deception.honeytokens import Honeytoken
from servers.deception.policies import ArmScore
from servers.deception.policy_evaluation import ReplayReport
from servers.deception.protocols.http import http_error_body, http_index_sample
from servers.deception.quality import QualityReport
from servers.deception.sessions import Session, SessionEvent
from servers.deception.synthetic import DatasetKind
from servers.deception.synthetic_stream import StreamedChunk
from servers.deception.templates import Template
from servers.mesh.errors import InvalidArgument
from servers.mesh.timestamps import timestamp
from shieldx.deception.v1 import deception_pb2 as pb

E = TypeVar("E", bound=enum.Enum)

_ROWS_FIELD = {
    DatasetKind.USERS: "users",
    DatasetKind.TRANSACTIONS: "transactions",
    DatasetKind.NETWORK_FLOWS: "network_flows",
}


# --- from requests ----------------------------------------------------------------------------


def optional_time(message: Message, field: str, path: str | None = None) -> datetime | None:
    """The UTC datetime of a Timestamp field, None if unset; InvalidArgument if out of range."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    try:
        if not 0 <= stamp.nanos < 1_000_000_000:
            raise ValueError(stamp.nanos)
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(path or field, "is not a valid timestamp") from None


def enum_member(kind: type[E], number: int, field: str, *, default: E | None = None) -> E:
    """The member of `kind` whose value is `number`; 0 gives `default` (or InvalidArgument without one)."""
    if number == 0:
        if default is None:
            raise InvalidArgument(field, "must be set")
        return default
    try:
        return kind(number)
    except ValueError:
        raise InvalidArgument(field, f"unknown value {number}") from None


# --- to responses -----------------------------------------------------------------------------


def template_message(template: Template, now: datetime) -> pb.Template:
    """A template with its protocol's fingerprint."""
    message = pb.Template(
        template_id=template.template_id,
        protocol=pb.Protocol.ValueType(template.protocol),
        product=template.product,
        product_version=template.product_version,
        os_family=template.os_family,
        hostname=template.hostname,
        banner=template.banner,
    )
    fingerprint = template.fingerprint
    if isinstance(fingerprint, HttpFingerprint):
        headers, index = http_index_sample(fingerprint, now)
        message.http.CopyFrom(
            pb.HttpFingerprint(
                server_header=fingerprint.server_header,
                headers=[pb.HttpHeader(name=name, value=value) for name, value in headers],
                date_format=fingerprint.date_format,
                not_found_body=http_error_body(fingerprint, 404, template.hostname, 80).decode(),
                index_body=index.decode(),
                index_title=f"{fingerprint.app_title} · {fingerprint.organisation}",
            )
        )
    elif isinstance(fingerprint, SshFingerprint):
        message.ssh.CopyFrom(
            pb.SshFingerprint(
                identification=fingerprint.identification,
                kex_algorithms=fingerprint.kex_algorithms,
                host_key_algorithms=fingerprint.host_key_algorithms,
                ciphers=fingerprint.ciphers,
                macs=fingerprint.macs,
                compression=fingerprint.compression,
            )
        )
    elif isinstance(fingerprint, MysqlFingerprint):
        message.mysql.CopyFrom(
            pb.MysqlFingerprint(
                server_version=fingerprint.server_version,
                protocol_version=fingerprint.protocol_version,
                capability_flags=fingerprint.capability_flags,
                character_set=fingerprint.character_set,
                status_flags=fingerprint.status_flags,
                auth_plugin_name=fingerprint.auth_plugin_name,
            )
        )
    elif isinstance(fingerprint, RedisFingerprint):
        message.redis.CopyFrom(
            pb.RedisFingerprint(
                redis_version=fingerprint.redis_version,
                os=fingerprint.os,
                run_id=fingerprint.run_id,
                tcp_port=fingerprint.tcp_port,
                requires_auth=fingerprint.requires_auth,
            )
        )
    elif isinstance(fingerprint, FtpFingerprint):
        message.ftp.CopyFrom(pb.FtpFingerprint(greeting=fingerprint.greeting, system_reply=fingerprint.system_reply))
    elif isinstance(fingerprint, SmtpFingerprint):
        message.smtp.CopyFrom(
            pb.SmtpFingerprint(
                banner=fingerprint.banner,
                hostname=fingerprint.hostname,
                ehlo_capabilities=fingerprint.ehlo_capabilities,
            )
        )
    return message


def decoy_message(listener: DecoyListener) -> pb.Decoy:
    """A live decoy with its bound port."""
    return pb.Decoy(
        decoy_id=listener.decoy_id,
        template_id=listener.template.template_id,
        protocol=pb.Protocol.ValueType(listener.config.protocol),
        bind_address=listener.config.bind_address,
        port=listener.port,
        listening=listener.listening,
        interaction_count=listener.interaction_count,
    )


def interaction_message(interaction: Interaction, session_id: str) -> pb.Interaction:
    """A recorded interaction."""
    return pb.Interaction(
        interaction_id=interaction.interaction_id,
        decoy_id=interaction.decoy_id,
        protocol=pb.Protocol.ValueType(interaction.protocol),
        source_address=interaction.source_address,
        source_port=interaction.source_port,
        bytes_received=interaction.bytes_received,
        received_sample=interaction.received_sample,
        credentials=[pb.Credential(username=c.username, secret=c.secret) for c in interaction.credentials],
        client_banner=interaction.client_banner,
        stage=pb.ReconStage.ValueType(interaction.stage),
        indicators=interaction.indicators,
        start_time=timestamp(interaction.start_time),
        end_time=timestamp(interaction.end_time),
        session_id=session_id,
    )


def event_message(event: SessionEvent) -> pb.SessionEvent:
    """One timeline entry."""
    message = pb.SessionEvent(
        event_id=event.event_id,
        time=timestamp(event.time),
        stage=pb.ReconStage.ValueType(event.stage),
        summary=event.summary,
    )
    if event.interaction is not None:
        message.interaction.CopyFrom(interaction_message(event.interaction, event.session_id))
    elif event.recon is not None:
        report = event.recon
        message.recon.CopyFrom(
            pb.ReconReport(
                kind=pb.ReconKind.ValueType(report.kind),
                reporting_service=report.reporting_service,
                method=report.method,
                detail=report.detail,
                claimed_subject=report.claimed_subject,
            )
        )
    return message


def session_message(session: Session) -> pb.Session:
    """A session without its timeline."""
    return pb.Session(
        session_id=session.session_id,
        source_address=session.source_address,
        create_time=timestamp(session.create_time),
        last_event_time=timestamp(session.last_event_time),
        event_count=session.event_count,
        stage=pb.ReconStage.ValueType(session.stage or 0),
        decoy_ids=session.decoy_ids,
        labels=session.labels,
    )


def alert_message(alert: Alert) -> pb.Alert:
    """A deduplicated alert."""
    return pb.Alert(
        alert_id=alert.alert_id,
        kind=pb.AlertKind.ValueType(alert.kind),
        severity=pb.Severity.ValueType(alert.severity),
        source_address=alert.source_address,
        count=alert.count,
        stage=pb.ReconStage.ValueType(alert.stage or 0),
        decoy_ids=alert.decoy_ids,
        session_id=alert.session_id,
        batch_id=alert.batch_id,
        honeytoken_id=alert.honeytoken_id,
        summary=alert.summary,
        first_time=timestamp(alert.first_time),
        last_time=timestamp(alert.last_time),
    )


def arm_score_message(score: ArmScore) -> pb.ArmScore:
    """One decoy's score at selection time."""
    return pb.ArmScore(
        decoy_id=score.decoy_id,
        score=score.score,
        posterior_alpha=score.posterior_alpha,
        posterior_beta=score.posterior_beta,
    )


def stats_message(stats: DecoyStats, protocols: Mapping[str, Protocol]) -> pb.DecoyStats:
    """A decoy's selection statistics."""
    protocol = protocols.get(stats.decoy_id)
    return pb.DecoyStats(
        decoy_id=stats.decoy_id,
        protocol=pb.Protocol.ValueType(protocol or 0),
        selections=stats.selections,
        feedbacks=stats.feedbacks,
        reward_sum=stats.reward_sum,
        engagement_rate=stats.engagement_rate,
        posterior_alpha=stats.posterior_alpha,
        posterior_beta=stats.posterior_beta,
        posterior_mean=stats.posterior_mean,
    )


def replay_message(report: ReplayReport) -> pb.ReplayPolicyResponse:
    """What an offline replay measured."""
    return pb.ReplayPolicyResponse(
        policy=pb.SelectionPolicy.ValueType(report.policy.value),
        seed=report.seed,
        rounds=report.rounds,
        policy_reward=report.policy_reward,
        random_reward=report.random_reward,
        best_fixed_decoy_id=report.best_fixed_decoy_id,
        best_fixed_reward=report.best_fixed_reward,
        regret_vs_best_fixed=report.regret_vs_best_fixed,
        regret_vs_random=report.regret_vs_random,
        curve=[
            pb.RegretPoint(
                round=point.round,
                regret_vs_best_fixed=point.regret_vs_best_fixed,
                random_regret_vs_best_fixed=point.random_regret_vs_best_fixed,
            )
            for point in report.curve
        ],
    )


def actor_message(actor: ActorGroup) -> pb.Actor:
    """Sessions attributed to one actor."""
    return pb.Actor(
        actor_id=actor.actor_id,
        session_ids=actor.session_ids,
        confidence=actor.confidence,
        source_networks=actor.source_networks,
        tool_fingerprints=actor.tool_fingerprints,
        usernames=actor.usernames,
        active_hours=actor.active_hours,
    )


def honeytoken_message(token: Honeytoken) -> pb.Honeytoken:
    """A minted honeytoken, secret included (shown once)."""
    return pb.Honeytoken(
        honeytoken_id=token.honeytoken_id,
        kind=pb.HoneytokenKind.ValueType(token.kind.value),
        username=token.username,
        secret=token.secret,
        batch_id=token.batch_id,
        row_index=token.row_index,
        create_time=timestamp(token.create_time),
    )


def quality_message(report: QualityReport) -> pb.QualityReport:
    """A quality report."""
    return pb.QualityReport(
        row_count=report.row_count,
        columns=[
            pb.ColumnQuality(
                column=c.column, metric=pb.QualityMetric.ValueType(c.metric.value), statistic=c.statistic, score=c.score
            )
            for c in report.columns
        ],
        overall_score=report.overall_score,
    )


def chunk_message(streamed: StreamedChunk, batch_id: str) -> pb.GenerateSyntheticDataResponse:
    """One streamed chunk: its rows as columns, quality and planted honeytokens."""
    chunk = streamed.chunk
    message = pb.GenerateSyntheticDataResponse(
        batch_id=batch_id,
        seed=chunk.seed,
        generator_version=chunk.generator_version,
        chunk_index=chunk.plan.chunk_index,
        row_offset=chunk.plan.row_offset,
        row_count=chunk.row_count,
        last=chunk.plan.last,
        quality=quality_message(streamed.quality),
        honeytokens=[honeytoken_message(t) for t in streamed.honeytokens],
    )
    rows: Any = getattr(message, _ROWS_FIELD[chunk.kind])
    _fill_columns(rows, chunk.columns.items())
    if streamed.batch_quality is not None:
        message.batch_quality.CopyFrom(quality_message(streamed.batch_quality))
    message.generation_time.FromNanoseconds(round(streamed.generation_seconds * 1e9))
    return message


def _fill_columns(rows: Any, columns: Iterable[tuple[str, Any]]) -> None:
    # The chunk's column names are the *Columns message's field names, in the same order.
    for name, column in columns:
        getattr(rows, name).extend(column.tolist())
