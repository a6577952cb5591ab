"""The fuzz harness itself: it passes a robust service and catches one that crashes."""

from __future__ import annotations

from pathlib import Path

import grpc

from servers.mesh.server import Mount
from tests.conftest import StartServer, test_config
from tests.support.echo import EchoServicer, echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.fuzz import fuzz_service

ECHO = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]


async def test_echo_service_survives_the_harness(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    # Relay needs a peer; Echo's sleep knob would only test patience.
    report = await fuzz_service(running.channel, ECHO, skip=["Relay"], rounds=10)
    report.assert_clean()
    assert report.calls > 50
    assert report.codes["Echo"]["INVALID_ARGUMENT"] > 0, "malformed bytes were refused"


class Fragile(EchoServicer):
    async def Echo(self, request: echo_pb2.EchoRequest, context: object) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(text=str(100 // len(request.text)))  # ZeroDivisionError on ""


async def test_harness_reports_an_unguarded_handler(start_server: StartServer, tmp_path: Path) -> None:
    def mounts(runtime: object) -> list[Mount]:
        return [Mount(ECHO, Fragile(runtime), echo_pb2_grpc.add_EchoServiceServicer_to_server)]  # type: ignore[arg-type]

    running = await start_server(mounts, test_config(tmp_path))
    report = await fuzz_service(running.channel, ECHO, skip=["Relay"], rounds=5)
    assert any("Echo [empty] -> INTERNAL" in f for f in report.failures)
    assert grpc.StatusCode.INTERNAL in {grpc.StatusCode[c] for c in report.codes["Echo"]}
