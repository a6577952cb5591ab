"""One health monitor per registry: two sharding server processes sharing a registry (one SQLite
file, or one PostgreSQL schema) elect one monitor between them, and the other takes over when
the leader is killed.

What a user sees: `shieldx_sharding_monitor_leader` is 1 on exactly one server, only that one
runs health checks (`shieldx_sharding_health_check_seconds_count` grows there alone), and after
a SIGKILL of the leader the survivor reports itself leader and checks the nodes.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shieldx.sharding.v1 import sharding_pb2 as pb
from shieldx.sharding.v1 import sharding_pb2_grpc
from tests.conftest import POSTGRES_URL
from tests.support.polling import wait_until
from tests.support.processes import ServerProcess

CHECK_INTERVAL = 0.25


def scrape(server: ServerProcess, name: str) -> float:
    """The sum of a metric's samples on a server's /metrics (0 if it has none)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as answer:
        page = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
    )


@pytest.fixture
def servers(tmp_path: Path, store_config: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {
        "SHIELDX_DATA_DIR": str(tmp_path / "registry"),
        "SHIELDX_SHARDING__HEALTH_CHECK_INTERVAL_SECONDS": str(CHECK_INTERVAL),
        "SHIELDX_SHARDING__AUTOMATIC_FAILOVER": "false",
        "SHIELDX_SHARDING__TOPOLOGY_REFRESH_SECONDS": "0.2",
    }
    if store_config["database_url"]:
        env["SHIELDX_DATABASE_URL"] = store_config["database_url"]
        env["SHIELDX_DATABASE_SCHEMA"] = store_config["database_schema"]
    first = ServerProcess("servers.sharding", tmp_path, env=env, name="sharding-1")
    second = ServerProcess("servers.sharding", tmp_path, env=env, name="sharding-2")
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()


def test_one_server_of_a_registry_monitors_and_another_takes_over_when_it_dies(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    with grpc.insecure_channel(servers[0].address) as channel:
        sharding_pb2_grpc.ShardingServiceStub(channel).RegisterShard(
            pb.RegisterShardRequest(shard_id="shard-a", primary=pb.NodeSpec(node_id="a-p", dsn=POSTGRES_URL)),
            timeout=10,
        )

    def leaders() -> list[float]:
        return [scrape(s, "shieldx_sharding_monitor_leader") for s in servers]

    wait_until(lambda: sorted(leaders()) == [0, 1], 10, "one leader")
    leader, standby = servers if leaders()[0] == 1 else servers[::-1]
    checks = "shieldx_sharding_health_check_seconds_count"
    wait_until(lambda: scrape(leader, checks) > 0, 10, "checking on the leader")
    before = scrape(leader, checks), scrape(standby, checks)
    time.sleep(6 * CHECK_INTERVAL)
    assert scrape(leader, checks) > before[0], "the leader keeps checking"
    assert scrape(standby, checks) == before[1] == 0, "the standby never checks"

    leader.signal(signal.SIGKILL)
    leader.wait()
    killed_at = time.monotonic()
    wait_until(lambda: scrape(standby, "shieldx_sharding_monitor_leader") == 1, 20, "taken over")
    taken_over_after = time.monotonic() - killed_at
    wait_until(lambda: scrape(standby, checks) > 0, 10, "checking on the new leader")
    print(f"\nmonitor taken over {taken_over_after:.2f} s after SIGKILL of the leader")
