"""Real server processes for end-to-end tests: start, wait for SERVING, signal, collect logs."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.endpoints import free_port

ROOT = Path(__file__).resolve().parents[2]


SHARED_KEK = base64.b64encode(os.urandom(32)).decode("ascii")
"""One key-encryption key for every server a test run starts, as replicas are given one from a
Secret: servers sharing a database must open each other's sealed keys (servers/mesh/vault.py)."""


def wait_serving(address: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until `address` answers SERVING (fails early if the process died)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before SERVING")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} did not become SERVING in {timeout}s")


class ServerProcess:
    """`python -m <module>` as a child process on a free port, its output in a log file."""

    def __init__(
        self,
        module: str,
        tmp_path: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.module = module
        self.name = name or module.rsplit(".", 1)[-1]
        self.port = free_port()
        self.metrics_port = free_port()
        self.data_dir = tmp_path / self.name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp_path / f"{self.name}.log"
        self.env = {
            **os.environ,
            "SHIELDX_PORT": str(self.port),
            "SHIELDX_METRICS_PORT": str(self.metrics_port),
            "SHIELDX_DATA_DIR": str(self.data_dir),
            "SHIELDX_AUTH__ENABLED": "false",
            "SHIELDX_SECRETS__KEK": SHARED_KEK,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")]),
            **(env or {}),
        }
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        if wait:
            wait_serving(self.address, process=self.process)
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
