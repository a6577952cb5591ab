"""Every server answers shieldx.mesh.v1.PostureService/GetPosture: its settings, scope-protected, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.errors import ShieldxError
from clients.posture import PostureClient
from servers.mesh.server import Mount, Runtime
from shieldx.mesh.v1 import posture_pb2
from tests.conftest import StartServer, test_config
from tests.support.echo import echo_mount
from tests.support.tokens import TestAuthority


async def test_posture_reports_the_runtime_settings_and_the_service_facts(
    start_server: StartServer, tmp_path: Path
) -> None:
    def mounts(runtime: Runtime) -> list[Mount]:
        runtime.posture.protections["payment_references_encrypted"] = True
        runtime.posture.retention_seconds["events"] = 0
        runtime.posture.retention_seconds["request_ids"] = 86400
        return [echo_mount(runtime)]

    config = test_config(tmp_path, rate_limit__enabled=False, log_format="text")
    running = await start_server(mounts, config)
    posture = (await PostureClient(running.channel).get_posture(posture_pb2.GetPostureRequest())).posture
    assert posture.service == "compliance"
    assert not posture.auth_enabled
    assert not posture.rate_limit_enabled
    assert not posture.tls_enabled
    assert posture.log_format == "text" and not posture.logs_carry_trace_ids
    assert posture.storage == "sqlite"
    assert dict(posture.protections) == {"payment_references_encrypted": True}
    assert {r.record: r.seconds for r in posture.retention} == {"events": 0, "request_ids": 86400}
    assert posture.start_time.seconds > 0


@pytest.mark.parametrize(("scopes", "code"), [(None, "UNAUTHENTICATED"), (["echo.read"], "PERMISSION_DENIED")])
async def test_posture_needs_the_mesh_posture_scope(
    start_server: StartServer, tmp_path: Path, scopes: list[str] | None, code: str
) -> None:
    authority = TestAuthority()
    config = test_config(tmp_path, auth__enabled=True)
    running = await start_server(lambda rt: [echo_mount(rt)], config, verifier=authority.verifier)
    client = PostureClient(running.channel)
    metadata = authority.metadata(scopes) if scopes is not None else ()
    with pytest.raises(ShieldxError) as caught:
        await client.get_posture(posture_pb2.GetPostureRequest(), metadata=metadata)
    assert caught.value.code.name == code
    allowed = await client.get_posture(posture_pb2.GetPostureRequest(), metadata=authority.metadata(["mesh.posture"]))
    assert allowed.posture.auth_enabled
