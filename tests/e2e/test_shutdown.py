"""SIGTERM on a real server process: NOT_SERVING first, the in-flight call completes, exit 0."""

from __future__ import annotations

import signal
import threading
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support.echo import echo_pb2, echo_pb2_grpc
from tests.support.polling import wait_until
from tests.support.processes import ServerProcess


def echo_calls_started(server: ServerProcess) -> float:
    """`grpc_server_started_total` of Echo, as the server's /metrics reports it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "grpc_server_started_total" and sample.labels.get("grpc_method") == "Echo":
                return sample.value
    return 0.0


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
            wait_until(lambda: echo_calls_started(server) == 1, what="the slow call reaching the server")
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
