"""`shieldx migrate status | up` on SQLite and PostgreSQL, as the release Job and compose run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from servers.cli.migrate import MIGRATIONS
from servers.mesh.storage import discover_migrations
from tests.support.processes import ROOT


def shieldx(store: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")]),
        "SHIELDX_DATABASE_URL": store["database_url"],
        "SHIELDX_DATABASE_SCHEMA": store.get("database_schema", ""),
    }
    command = [sys.executable, "-m", "servers.cli", "--data-dir", str(Path(store["data_dir"]) / "state"), *args]
    return subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_migrate_up_applies_what_status_shows_pending_once(store_config: dict[str, str]) -> None:
    dialect = "postgres" if store_config["database_url"] else "sqlite"
    expected = [(p, m.version) for p in MIGRATIONS["tokens"] for m in discover_migrations(p, dialect)]

    before = shieldx(store_config, "migrate", "status", "--service", "tokens")
    assert before.returncode == 1, before.stderr
    assert before.stdout.count(" pending") == len(expected) and " applied" not in before.stdout

    up = shieldx(store_config, "migrate", "up", "--service", "tokens")
    assert up.returncode == 0, up.stderr
    assert "servers.tokens.migrations applied 0001" in up.stdout

    after = shieldx(store_config, "migrate", "status", "--service", "tokens")
    assert after.returncode == 0, after.stderr
    assert after.stdout.count(" applied") == len(expected) and " pending" not in after.stdout

    again = shieldx(store_config, "migrate", "up", "--service", "tokens")
    assert again.returncode == 0 and " applied 0" not in again.stdout, "nothing is applied twice"
