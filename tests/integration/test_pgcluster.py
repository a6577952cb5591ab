"""The throwaway PostgreSQL helper does what its docstring promises: streaming and synchronous
replication, lag, SIGKILL, promotion, and leaving nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from tests.support.pgcluster import PgWorkspace, PostgresUnavailable, processes_in

ROOT = Path(__file__).resolve().parents[2]


def test_a_synchronous_shard_commits_only_with_its_replica(pg: PgWorkspace) -> None:
    shard = pg.shard("s1", replicas=1, synchronous=True)
    primary, replica = shard.primary, shard.replicas[0]
    assert not primary.is_in_recovery() and replica.is_in_recovery()
    assert primary.replication() == {"s1-r1": ("streaming", "quorum")}
    primary.query("CREATE TABLE t (i INT)")
    primary.query("INSERT INTO t SELECT generate_series(1, 1000)")
    shard.wait_caught_up()
    assert shard.replication_lag_bytes(replica) == 0
    assert replica.value("SELECT count(*) FROM t") == 1000

    replica.stop()
    insert = threading.Thread(target=primary.query, args=("INSERT INTO t VALUES (0)",), daemon=True)
    insert.start()
    insert.join(1.0)
    assert insert.is_alive(), "the COMMIT waits for a standby while none is there"
    replica.start()
    insert.join(30)
    assert not insert.is_alive(), "the COMMIT returns once the standby has flushed it"
    shard.wait_caught_up()
    assert replica.value("SELECT count(*) FROM t WHERE i = 0") == 1


def test_sigkill_then_promote_keeps_prepared_transactions(pg: PgWorkspace) -> None:
    shard = pg.shard("s2", replicas=1, synchronous=True, settings={"max_prepared_transactions": "4"})
    shard.primary.query("CREATE TABLE t (i INT)")
    with shard.primary.connect() as connection:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO t VALUES (42)")
        connection.execute("PREPARE TRANSACTION 'transfer-1'")
    shard.wait_caught_up()
    shard.primary.kill()
    shard.primary.wait_stopped()
    assert not shard.primary.running()
    with pytest.raises(psycopg.OperationalError):
        shard.primary.query("SELECT 1")
    replica = shard.replicas[0]
    replica.promote()
    replica.query("INSERT INTO t VALUES (1)")  # a promoted replica does not wait for a standby
    assert replica.current_lsn() > 0
    assert replica.query("SELECT gid FROM pg_prepared_xacts") == [("transfer-1",)], "in doubt on the new primary"
    replica.query("COMMIT PREPARED 'transfer-1'")
    assert replica.value("SELECT count(*) FROM t WHERE i = 42") == 1


def test_closing_and_reaping_leave_no_server_and_no_directory() -> None:
    code = (
        "from tests.support.pgcluster import PgWorkspace\n"
        "ws = PgWorkspace(); ws.primary('orphan'); print(ws.root, flush=True)\n"
        "import time; time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert child.stdout is not None
    abandoned = Path(child.stdout.readline().strip())
    assert processes_in(abandoned), "the child's server runs"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert processes_in(abandoned), "a killed test run cannot clean up after itself"

    try:
        workspace = PgWorkspace()  # reaps what the dead run left
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    assert not abandoned.exists() and not processes_in(abandoned)
    node = workspace.primary("p")
    root = workspace.root
    workspace.close()
    assert not node.running() and not root.exists() and not processes_in(root)
