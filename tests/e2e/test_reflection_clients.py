"""Clients nobody here wrote call every service of a running mesh with no proto files: the
Python `grpc_requests` reflection client, authenticated with a token from `shieldx token`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from grpc_requests import Client

from tests.e2e.test_up import mesh  # noqa: F401  (the fixture: shieldx up as a process)

pytestmark = pytest.mark.slow

READS = {
    "tokens": ("shieldx.tokens.v1.TokenService", "ListPublicKeys", "keys"),
    "credits": ("shieldx.credits.v1.CreditsService", "VerifyAuditChain", "ok"),
    "deployment": ("shieldx.deployment.v1.FlagService", "ListFlags", None),
    "sharding": ("shieldx.sharding.v1.ShardingService", "GetRingStats", None),
    "compliance": ("shieldx.compliance.v1.ComplianceService", "ListFrameworks", "frameworks"),
    "deception": ("shieldx.deception.v1.DeceptionService", "ListDecoys", "decoys"),
}
"""One read of each service's own contract, and a field its answer must carry (None: any answer)."""


def test_grpc_requests_calls_every_service_through_reflection(
    mesh: tuple[subprocess.Popen[str], dict[str, dict[str, object]], list[str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, endpoints, _ = mesh
    token = subprocess.run(
        [sys.executable, "-m", "servers.cli", "--data-dir", str(tmp_path / "state"), "token"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    for name, (service, method, field) in READS.items():
        client = Client.get_by_endpoint(f"127.0.0.1:{endpoints[name]['port']}")
        assert service in client.service_names, f"{name}: reflection lists {service}"
        answer = client.request(service, method, {}, metadata=[("authorization", f"Bearer {token}")])
        if field is not None:
            assert answer.get(field), f"{name}: {service}/{method} answered {answer}"
