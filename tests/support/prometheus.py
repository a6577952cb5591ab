"""A real Prometheus server for tests (Debian's `prometheus` package): scrapes the given
`/metrics` endpoints every `scrape_interval` and answers the query API on a free port.

`PrometheusServer.start()` returns once `/-/ready` answers; `wait_scraped()` waits until every
target has been scraped successfully (`up == 1`), so queries see each of them from then on.
The TSDB lives in a temporary directory; `stop()` terminates the process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clients.endpoints import free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def prometheus_binary() -> str | None:
    """The `prometheus` executable, or None when it is not installed."""
    return shutil.which("prometheus")


class PrometheusServer:
    """One Prometheus process scraping `targets` (`host:port` of `/metrics` endpoints)."""

    def __init__(
        self, directory: Path, targets: Sequence[str], *, scrape_interval: str = "500ms", job: str = "mesh"
    ) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian package `prometheus`)")
        self.binary = binary
        self.directory = directory / "prometheus"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.targets = list(targets)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": self.targets}]}],
        }
        # JSON is YAML: no YAML writer needed.
        (self.directory / "prometheus.yml").write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        """Start it and wait until it is ready."""
        log = (self.directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout}s:\n{self.log()[-2000:]}")
            time.sleep(0.1)
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with _OPENER.open(url, timeout=5) as answer:
            body = json.load(answer)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_scraped(self, timeout: float = 30.0) -> None:
        """Wait until every target's last scrape succeeded."""
        deadline = time.monotonic() + timeout
        while True:
            up = {sample["metric"]["instance"]: float(sample["value"][1]) for sample in self.query("up")}
            if all(up.get(target) == 1 for target in self.targets):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not all up within {timeout}s: {up}")
            time.sleep(0.2)

    def queries_answered(self) -> float:
        """Instant queries the server has answered (its own `prometheus_http_requests_total`)."""
        with _OPENER.open(f"{self.url}/metrics", timeout=5) as answer:
            page = answer.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in page.splitlines()
            if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line
        )

    def log(self) -> str:
        """What the server wrote so far."""
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Terminate the server (killed if it does not exit within 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _ready(self) -> bool:
        try:
            with _OPENER.open(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False
