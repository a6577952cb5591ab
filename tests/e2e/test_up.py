"""`shieldx up` from the outside: six processes, reflection via `buf curl`, health, restart, clean stop."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from clients.endpoints import SERVICES
from tests.support.processes import ROOT, wait_serving

BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")

CONTRACTS = {
    "tokens": "shieldx.tokens.v1.TokenService/",
    "credits": "shieldx.credits.v1.CreditsService/",
    "deployment": "shieldx.deployment.v1.DeploymentService/",
    "sharding": "shieldx.sharding.v1.ShardingService/",
    "compliance": "shieldx.compliance.v1.ComplianceService/",
    "deception": "shieldx.deception.v1.DeceptionService/",
}


_readers: dict[int, queue.Queue[str]] = {}


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    """Lines the launcher printed up to the one containing `needle`; fails after `timeout`
    even when the launcher prints nothing more (its output is read by a thread)."""
    lines = _readers.get(process.pid)
    if lines is None:
        lines = _readers[process.pid] = queue.Queue()
        assert process.stdout is not None
        output = process.stdout
        threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in output], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not printed within {timeout} s; got:\n" + "\n".join(seen))


@pytest.fixture
def mesh(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, dict[str, object]], list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servers.cli",
            "--data-dir",
            str(tmp_path / "state"),
            "up",
            "--free-ports",
            "--version",
            "credits=v2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        printed = _wait_for_line(process, "all servers SERVING", timeout=90)
        endpoints = json.loads((tmp_path / "state" / "endpoints.json").read_text())
        yield process, endpoints, printed
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def test_up_serves_all_six_with_reflection_health_and_metrics(
    mesh: tuple[subprocess.Popen[str], dict[str, dict[str, object]], list[str]],
) -> None:
    process, endpoints, printed = mesh
    assert set(endpoints) == {*SERVICES, "credits@v2"}
    table = "\n".join(printed)
    for name, endpoint in endpoints.items():
        if name == "credits@v2":
            continue
        address = f"127.0.0.1:{endpoint['port']}"
        assert address in table, "the endpoint table names every server"
        wait_serving(address, timeout=5)
        assert BUF, "buf is installed with the dev extra (buf-bin)"
        listed = subprocess.run(
            [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", f"http://{address}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert CONTRACTS[name] in listed, f"{name}: reflection lists the service's methods"
        assert "grpc.health.v1.Health/Check" in listed
        body = urllib.request.urlopen(f"http://127.0.0.1:{endpoint['metrics_port']}/metrics", timeout=5).read()
        assert b"grpc_server_handled_total" in body
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_up_runs_a_second_version_that_registers_for_routing(
    mesh: tuple[subprocess.Popen[str], dict[str, dict[str, object]], list[str]], tmp_path: Path
) -> None:
    _, endpoints, _ = mesh
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    deadline = time.monotonic() + 30
    while True:
        listed = subprocess.run(
            [
                sys.executable,
                "-m",
                "servers.cli",
                "--data-dir",
                str(tmp_path / "state"),
                "call",
                "deployment",
                "ListInstances",
                '{"service": "credits"}',
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        versions = {(i["version"], i["address"]) for i in json.loads(listed).get("instances", [])}
        expected = {
            ("v1", f"127.0.0.1:{endpoints['credits']['port']}"),
            ("v2", f"127.0.0.1:{endpoints['credits@v2']['port']}"),
        }
        if versions == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert versions == expected


def test_up_restarts_a_crashed_server(
    mesh: tuple[subprocess.Popen[str], dict[str, dict[str, object]], list[str]],
) -> None:
    process, endpoints, printed = mesh
    pid = next(int(line.split()[3]) for line in printed if line.startswith("credits "))
    os.kill(pid, signal.SIGKILL)
    _wait_for_line(process, "credits is SERVING again", timeout=60)
    wait_serving(f"127.0.0.1:{endpoints['credits']['port']}", timeout=5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_up_again_in_the_same_folder_comes_up_on_new_ports(tmp_path: Path) -> None:
    # Each `--free-ports` run listens elsewhere; the second used to leave five servers
    # NOT_SERVING, asking the first run's token endpoint for tokens.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    command = [sys.executable, "-m", "servers.cli", "--data-dir", str(tmp_path / "state"), "up", "--free-ports"]
    ports = []
    for _ in range(2):
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            _wait_for_line(process, "all servers SERVING", timeout=120)
            ports.append(json.loads((tmp_path / "state" / "endpoints.json").read_text())["tokens"]["port"])
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(60) == 0
    credentials = json.loads((tmp_path / "state" / "credentials").read_text())
    assert ports[0] != ports[1] and credentials["token_endpoint"] == f"127.0.0.1:{ports[1]}"
