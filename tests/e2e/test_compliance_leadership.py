"""Two compliance servers on one PostgreSQL store: exactly one runs the scheduled assessments, and the
other takes over when it is killed (real processes, a 2 s monitoring interval)."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.endpoints import SERVICES, free_port
from tests.conftest import POSTGRES_URL, drop_schema
from tests.e2e.test_sharding_leadership import scrape
from tests.support.polling import wait_until
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.slow

RUNS = "shieldx_compliance_assessment_duration_seconds_count"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    # Every peer is a closed port: the assessments are quick and entirely ERROR evidence.
    peers = ",".join(f"{s}=127.0.0.1:{free_port()}" for s in SERVICES if s != "compliance")
    env = {
        "SHIELDX_DATABASE_URL": POSTGRES_URL,
        "SHIELDX_DATABASE_SCHEMA": schema,
        "SHIELDX_ENDPOINTS": peers,
        "SHIELDX_COMPLIANCE__MONITORING_INTERVAL_SECONDS": "2",
        "SHIELDX_COMPLIANCE__CALL_TIMEOUT_SECONDS": "0.5",
    }
    first = ServerProcess("servers.compliance", tmp_path, env=env, name="compliance-1")
    second = ServerProcess("servers.compliance", tmp_path, env=env, name="compliance-2")
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        second.stop()
        first.stop()
        drop_schema(schema)


def test_one_compliance_server_of_a_store_assesses_and_another_takes_over_when_it_dies(
    servers: tuple[ServerProcess, ServerProcess],
) -> None:
    wait_until(lambda: sum(scrape(s, RUNS) for s in servers) >= 2, 30, "two scheduled assessments")
    leader, standby = servers if scrape(servers[0], RUNS) > 0 else servers[::-1]
    before = scrape(leader, RUNS)
    time.sleep(5)
    assert scrape(leader, RUNS) > before, "the leader keeps assessing every 2 s"
    assert scrape(standby, RUNS) == 0, "the standby never assesses"

    leader.signal(signal.SIGKILL)
    leader.wait()
    killed_at = time.monotonic()
    wait_until(lambda: scrape(standby, RUNS) >= 1, 30, "the standby took over")
    print(f"\nscheduled assessments taken over {time.monotonic() - killed_at:.2f} s after SIGKILL of the leader")
