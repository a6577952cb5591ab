"""SIGTERM on a real server process: NOT_SERVING first, the in-flight call completes, exit 0."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.echo import echo_pb2, echo_pb2_grpc
from tests.support.processes import ServerProcess


def test_sigterm_drains_in_flight_call_after_health_flips(tmp_path: Path) -> None:
    server = ServerProcess("tests.support.echo_server", tmp_path, env={"SHIELDX_DRAIN_DELAY_SECONDS": "0.3"}).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            answer: dict[str, object] = {}

            def slow_call() -> None:
                stub = echo_pb2_grpc.EchoServiceStub(channel)
                answer["reply"] = stub.Echo(echo_pb2.EchoRequest(text="slow", sleep_seconds=2.0), timeout=20)

            caller = threading.Thread(target=slow_call)
            caller.start()
            threading.Event().wait(0.5)  # the call is in flight
            server.signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert caller.is_alive(), "health flipped while the slow call was still running"
            caller.join(20)
            reply = answer["reply"]
            assert isinstance(reply, echo_pb2.EchoResponse)
            assert reply.text == "slow"
        assert server.wait(20) == 0
    finally:
        server.stop()
    assert '"message": "stopped"' in server.logs()
