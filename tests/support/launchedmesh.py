"""`shieldx up --free-ports` as a child process for e2e tests, plus a little traffic for it.

`launched_mesh(directory)` starts the launcher, waits for "all servers SERVING" and yields the
endpoints it wrote; `drive_traffic(directory)` makes a few calls that move the series which only
appear after use (credits operations, refused token requests reported to deception, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clients.connect import connect
from clients.credits import CreditsClient
from clients.deception import DeceptionClient
from clients.deployment import ExperimentClient, FlagClient
from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from clients.tokens import TokenClient
from shieldx.credits.v1 import credits_pb2
from shieldx.deception.v1 import deception_pb2
from shieldx.deployment.v1 import experiments_pb2, flags_pb2
from shieldx.sharding.v1 import sharding_pb2
from shieldx.tokens.v1 import tokens_pb2
from tests.support.processes import ROOT

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def launched_mesh(directory: Path, timeout: float = 120.0) -> Iterator[dict[str, dict[str, Any]]]:
    """The six servers run by `shieldx up --free-ports` with state in `directory`; stopped after."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "servers.cli", "--data-dir", str(directory), "up", "--free-ports"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    output = process.stdout
    threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in output], daemon=True).start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not seen or "all servers SERVING" not in seen[-1]:
            remaining = deadline - time.monotonic()
            try:
                seen.append(lines.get(timeout=max(remaining, 0.01)))
            except queue.Empty:
                raise AssertionError("the mesh did not come up:\n" + "\n".join(seen)) from None
        yield json.loads((directory / "endpoints.json").read_text())
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def drive_traffic(directory: Path) -> None:
    """Credits operations (accepted and refused), refused token requests, flag and experiment
    calls, the local PostgreSQL registered as a one-node shard (so the monitor checks it), and
    a probe of every decoy."""
    credits = CreditsClient(connect("credits", data_dir=directory))
    await credits.purchase(
        credits_pb2.PurchaseRequest(account_id="metrics-e2e", amount=100, payment_reference="pay-e2e-1")
    )
    await credits.consume(credits_pb2.ConsumeRequest(account_id="metrics-e2e", amount=10))
    await credits.get_balance(credits_pb2.GetBalanceRequest(account_id="metrics-e2e"))
    with contextlib.suppress(ShieldxError):  # refused: counted by its reason
        await credits.consume(credits_pb2.ConsumeRequest(account_id="metrics-e2e", amount=10_000))
    flags = FlagClient(connect("deployment", data_dir=directory))
    with contextlib.suppress(ShieldxError):
        await flags.resolve_boolean(flags_pb2.ResolveBooleanRequest(flag_key="metrics-e2e"))
    experiments = ExperimentClient(connect("deployment", data_dir=directory))
    with contextlib.suppress(ShieldxError):  # no such experiment: answered and counted all the same
        await experiments.record_exposure(experiments_pb2.RecordExposureRequest(experiment_id="metrics-e2e"))
    with contextlib.suppress(ShieldxError):
        await experiments.record_outcome(experiments_pb2.RecordOutcomeRequest(experiment_id="metrics-e2e"))
    sharding = ShardingClient(connect("sharding", data_dir=directory))
    node = sharding_pb2.NodeSpec(node_id="metrics-e2e-1", dsn=LOCAL_POSTGRES)
    shard = sharding_pb2.RegisterShardRequest(shard_id="metrics-e2e", primary=node, request_id="metrics-e2e-shard")
    await sharding.register_shard(shard)
    deception = DeceptionClient(connect("deception", data_dir=directory))
    for decoy in (await deception.list_decoys(deception_pb2.ListDecoysRequest(page_size=100))).decoys:
        if decoy.listening:  # an attacker's probe: one line to every decoy
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", decoy.port)
                writer.write(b"INFO\r\n")
                await writer.drain()
                writer.close()
    tokens = TokenClient(connect("tokens", data_dir=directory))
    for _ in range(2):
        with contextlib.suppress(ShieldxError):  # refused: reported to deception
            await tokens.issue_token(tokens_pb2.IssueTokenRequest(client_id="nobody", client_secret="wrong"))


def scrape(port: int) -> str:
    """One `/metrics` page from a server on this machine."""
    with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        page: bytes = answer.read()
    return page.decode()
