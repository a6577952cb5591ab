"""`shieldx up` refuses ports that are taken instead of restarting servers that cannot bind them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.endpoints import Endpoint
from servers.cli import launcher
from servers.cli.launcher import PortInUse, check_ports_free, run_up


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_taken_port_is_named_with_the_way_out(taken_port: int) -> None:
    endpoints = {
        "tokens": Endpoint("tokens", "127.0.0.1", free_port(), free_port()),
        "credits": Endpoint("credits", "127.0.0.1", free_port(), taken_port),
    }
    with pytest.raises(PortInUse) as caught:
        check_ports_free(endpoints)
    assert f"127.0.0.1:{taken_port}" in str(caught.value) and "credits" in str(caught.value)
    assert "--free-ports" in str(caught.value)
    check_ports_free({"tokens": endpoints["tokens"]})


async def test_up_ends_with_the_message_instead_of_a_restart_loop(
    taken_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    planned = {"tokens": Endpoint("tokens", "127.0.0.1", taken_port, free_port())}
    monkeypatch.setattr(launcher, "plan_endpoints", lambda *args: planned)
    spawned: list[object] = []
    monkeypatch.setattr(launcher.Supervisor, "_spawn", lambda self, child: spawned.append(child))

    assert await run_up(tmp_path, services=["tokens"]) == 1
    error = capsys.readouterr().err
    assert f"port 127.0.0.1:{taken_port} is already in use" in error and "shieldx up --free-ports" in error
    assert not spawned, "no server was started"
