"""`shieldx up`: run the six servers as supervised processes on one machine.

Each server runs as `python -m servers.<name>` with its store under the data directory. The
launcher waits until every one reports SERVING, prints where they listen, restarts one that
crashes (with exponential backoff), and on Ctrl-C or SIGTERM stops them all gracefully.
The endpoints are written to `<data_dir>/endpoints.json` for `shieldx status` and the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from clients.endpoints import ENDPOINTS_FILE, SERVICES, Endpoint, health_status, plan_endpoints
from servers.mesh.filemodes import open_private_log, private_directory


@dataclass
class Child:
    """One supervised server process."""

    endpoint: Endpoint
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    backoff: float = 1.0
    started_at: float = 0.0
    log: TextIO | None = None
    status: str = "STARTING"
    monitor: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Starts, watches and stops the server processes."""

    max_backoff = 30.0
    stable_after = 60.0

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        data_dir: Path,
        *,
        config_path: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.children = {name: Child(endpoint) for name, endpoint in endpoints.items()}
        self.data_dir = data_dir
        self.config_path = config_path
        self.extra_env = dict(extra_env or {})
        self.echo = echo
        self.stopping = False

    def _environment(self, endpoint: Endpoint) -> dict[str, str]:
        peers = ",".join(
            f"{c.endpoint.service}={c.endpoint.address}" for c in self.children.values() if c.endpoint.version == "v1"
        )
        env = {
            **os.environ,
            # The token service creates the signing key, an admin and one client per server on
            # its first start, and writes them to <data_dir>/credentials for the others.
            "SHIELDX_TOKENS__BOOTSTRAP": "true",
            # Every server registers with the deployment server and follows its fault injections.
            "SHIELDX_AGENT__ENABLED": "true",
            "SHIELDX_DATA_DIR": str(self.data_dir),
            "SHIELDX_HOST": endpoint.host,
            "SHIELDX_PORT": str(endpoint.port),
            "SHIELDX_METRICS_PORT": str(endpoint.metrics_port),
            "SHIELDX_VERSION": endpoint.version,
            "SHIELDX_ENDPOINTS": peers,
            **self.extra_env,
        }
        if self.config_path:
            env["SHIELDX_CONFIG"] = self.config_path
        return env

    async def _spawn(self, child: Child) -> None:
        logs = private_directory(self.data_dir / "logs")
        if child.log is None:
            child.log = open_private_log(logs / f"{child.endpoint.name}.log")
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"servers.{child.endpoint.service}",
            env=self._environment(child.endpoint),
            stdout=child.log,
            stderr=child.log,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops children in order
        )
        child.started_at = time.monotonic()
        child.status = "STARTING"

    async def _wait_serving(self, child: Child, timeout: float) -> bool:
        # A server that exits meanwhile is restarted by its watcher; keep waiting for it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            child.status = await health_status(child.endpoint.address, timeout=1.0)
            if child.status == "SERVING":
                return True
            await asyncio.sleep(0.2)
        return False

    async def start(self, timeout: float = 60.0) -> bool:
        """Start every server (tokens first) and wait for SERVING; False if one never got there."""
        first, *rest = self.children.values()
        await self._launch(first)
        ok = await self._wait_serving(first, timeout)
        for child in rest:
            await self._launch(child)
        results = await asyncio.gather(*(self._wait_serving(c, timeout) for c in rest))
        self._write_endpoints()
        return ok and all(results)

    async def _launch(self, child: Child) -> None:
        await self._spawn(child)
        child.monitor = asyncio.create_task(self._watch(child))

    async def _watch(self, child: Child) -> None:
        while not self.stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self.stopping:
                return
            child.status = f"EXITED({code})"
            if time.monotonic() - child.started_at > self.stable_after:
                child.backoff = 1.0
            self.echo(f"{child.endpoint.name} exited with {code}; restarting in {child.backoff:.0f}s")
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, self.max_backoff)
            if self.stopping:
                return
            child.restarts += 1
            await self._spawn(child)
            if await self._wait_serving(child, 60.0):
                self.echo(f"{child.endpoint.name} is SERVING again (restart {child.restarts})")

    def _write_endpoints(self) -> None:
        path = self.data_dir / ENDPOINTS_FILE
        path.write_text(json.dumps({n: vars(c.endpoint) for n, c in self.children.items()}, indent=2) + "\n")

    def table(self) -> str:
        """A table of the servers: where they listen and how they are."""
        rows = [("SERVICE", "GRPC", "METRICS", "PID", "STATUS")]
        for name, child in self.children.items():
            pid = str(child.process.pid) if child.process else "-"
            metrics = f"http://{child.endpoint.host}:{child.endpoint.metrics_port}/metrics"
            rows.append((name, child.endpoint.address, metrics, pid, child.status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every server (they drain), then SIGKILL whatever is still running after `grace`."""
        self.stopping = True
        running = [c for c in self.children.values() if c.process and c.process.returncode is None]
        for child in reversed(running):
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        for child in self.children.values():
            if child.monitor:
                child.monitor.cancel()
            if child.log:
                child.log.close()


class PortInUse(Exception):
    """A port `shieldx up` means to listen on is taken."""


def check_ports_free(endpoints: Mapping[str, Endpoint]) -> None:
    """PortInUse naming the first gRPC or metrics port something else listens on: a server
    could not bind it and would be restarted forever."""
    for endpoint in endpoints.values():
        for kind, port in (("gRPC", endpoint.port), ("metrics", endpoint.metrics_port)):
            family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # As the servers bind: a port a stopped run left in TIME_WAIT is free, a listener is not.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((endpoint.host, port))
                except OSError as exc:
                    raise PortInUse(
                        f"{endpoint.name}: {kind} port {endpoint.host}:{port} is already in use ({exc.strerror}); "
                        "stop what listens there, or run `shieldx up --free-ports`"
                    ) from exc


async def run_up(
    data_dir: Path,
    *,
    services: Sequence[str] = SERVICES,
    host: str = "127.0.0.1",
    free_ports: bool = False,
    versions: Sequence[tuple[str, str]] = (),
    config_path: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> int:
    """Run the mesh until Ctrl-C/SIGTERM; returns the exit code (1 if a port is taken)."""
    await asyncio.to_thread(private_directory, data_dir)
    endpoints = plan_endpoints(services, host, free_ports, versions)
    try:
        check_ports_free(endpoints)
    except PortInUse as exc:
        print(f"shieldx up: {exc}", file=sys.stderr, flush=True)
        return 1
    supervisor = Supervisor(endpoints, data_dir, config_path=config_path, extra_env=extra_env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"starting {len(supervisor.children)} servers (logs in {data_dir / 'logs'}) ...", flush=True)
    ready = asyncio.create_task(supervisor.start())
    await asyncio.wait([ready, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.result():
        print(supervisor.table(), flush=True)
        print("all servers SERVING; Ctrl-C stops them", flush=True)
    elif ready.done():
        print(supervisor.table(), flush=True)
        print(f"some servers did not become SERVING; see {data_dir / 'logs'}", flush=True)
    await stop.wait()
    print("stopping ...", flush=True)
    await supervisor.stop()
    if not ready.done():
        ready.cancel()
    print("stopped", flush=True)
    return 0
