"""`shieldx.mesh.v1.PostureService`: every server's security settings, without secrets, for compliance checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from servers.mesh.config import MeshConfig
from shieldx.mesh.v1 import posture_pb2, posture_pb2_grpc


@dataclass
class PostureFacts:
    """What a service reports about itself beyond the runtime's own settings."""

    protections: dict[str, bool] = field(default_factory=dict)
    """Protections by name, e.g. `payment_references_encrypted`."""
    retention_seconds: dict[str, int] = field(default_factory=dict)
    """How long each kind of record is kept, by record name; 0 means forever."""


class PostureServicer(posture_pb2_grpc.PostureServiceServicer):
    """Answers GetPosture from the process's config and the facts its service reported."""

    def __init__(self, config: MeshConfig, facts: PostureFacts) -> None:
        self.config = config
        self.facts = facts
        self.start_time = time.time()

    def posture(self) -> posture_pb2.Posture:
        """The posture as configured now."""
        config = self.config
        message = posture_pb2.Posture(
            service=config.service,
            version=config.version,
            auth_enabled=config.auth.enabled,
            rate_limit_enabled=config.rate_limit.enabled,
            rate_limit_per_second=config.rate_limit.rate_per_second if config.rate_limit.enabled else 0.0,
            tls_enabled=config.tls.enabled,
            client_certificates_required=config.tls.enabled and config.tls.require_client_cert,
            log_format=config.log_format,
            logs_carry_trace_ids=config.log_format == "json",
            storage="postgres" if config.database_url else "sqlite",
            protections=self.facts.protections,
            retention=[
                posture_pb2.RetentionPeriod(record=name, seconds=seconds)
                for name, seconds in sorted(self.facts.retention_seconds.items())
            ],
        )
        message.start_time.FromNanoseconds(int(self.start_time * 1e9))
        return message

    async def GetPosture(self, request: posture_pb2.GetPostureRequest, context: Any) -> posture_pb2.GetPostureResponse:
        """See the contract."""
        return posture_pb2.GetPostureResponse(posture=self.posture())
