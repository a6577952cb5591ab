"""`shieldx migrate status | up` on SQLite and PostgreSQL, as the release Job and compose run it."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg

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


def test_every_migration_the_cli_applies_can_be_reverted() -> None:
    for service, packages in MIGRATIONS.items():
        for dialect in ("sqlite", "postgres"):
            for package in packages:
                for migration in discover_migrations(package, dialect):
                    assert migration.down, f"{service}: {package} {migration.version:04d} ({dialect}) has no down"


def test_down_reverts_the_newest_after_a_backup_that_restore_brings_back(store_config: dict[str, str]) -> None:
    dialect = "postgres" if store_config["database_url"] else "sqlite"
    newest = [m for p in MIGRATIONS["deployment"] for m in discover_migrations(p, dialect)][-2:]
    table = re.search(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", newest[-1].sql, re.IGNORECASE)
    assert table, "the newest deployment migration creates a table"
    assert shieldx(store_config, "migrate", "up", "--service", "deployment").returncode == 0
    assert table_exists(store_config, table[1])
    backups = Path(store_config["data_dir"]) / "state" / "backups"
    before_down = set(backups.iterdir())

    down = shieldx(store_config, "migrate", "down", "2", "--service", "deployment")
    assert down.returncode == 0, down.stderr
    for migration in newest:
        assert f"reverted {migration.version:04d} {migration.name}" in down.stdout
    (backup,) = set(backups.iterdir()) - before_down
    assert backup.stat().st_mode & 0o777 == 0o600
    assert backup.suffix == (".dump" if store_config["database_url"] else ".db")
    status = shieldx(store_config, "migrate", "status", "--service", "deployment")
    assert status.returncode == 1
    pending = [line.split()[3] for line in status.stdout.splitlines() if line.endswith("pending")]
    assert pending == [m.name for m in newest]
    assert not table_exists(store_config, table[1]) and table_exists(store_config, "deployments")

    restored = shieldx(store_config, "migrate", "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert shieldx(store_config, "migrate", "status", "--service", "deployment").returncode == 0
    assert table_exists(store_config, table[1])

    assert shieldx(store_config, "migrate", "down", "1", "--service", "deployment").returncode == 0
    again = shieldx(store_config, "migrate", "up", "--service", "deployment")
    assert again.returncode == 0 and f"{newest[-1].package} applied {newest[-1].version:04d}" in again.stdout


def test_down_refuses_what_it_cannot_do_before_touching_the_store(store_config: dict[str, str]) -> None:
    assert shieldx(store_config, "migrate", "up", "--service", "sharding").returncode == 0
    backups = set((Path(store_config["data_dir"]) / "state" / "backups").iterdir())
    for args in (["0", "--service", "sharding"], ["99", "--service", "sharding"], ["1"]):
        refused = shieldx(store_config, "migrate", "down", *args)
        assert refused.returncode == 2, refused.stdout
    assert set((Path(store_config["data_dir"]) / "state" / "backups").iterdir()) == backups, "no backup either"
    assert shieldx(store_config, "migrate", "status", "--service", "sharding").returncode == 0, "nothing reverted"


def table_exists(store: dict[str, str], table: str) -> bool:
    if not store["database_url"]:
        with sqlite3.connect(Path(store["data_dir"]) / "state" / "deployment.db") as connection:
            found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
            return found.fetchone() is not None
    with psycopg.connect(store["database_url"]) as connection:
        found = connection.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (store["database_schema"], table),
        )
        return found.fetchone() is not None


def test_every_migrations_package_of_a_service_store_is_known_to_the_cli() -> None:
    servers = ROOT / "servers"
    found = {
        ".".join(path.relative_to(ROOT).parts)
        for path in servers.rglob("*migrations")
        if path.is_dir() and (path / "__init__.py").exists()
    }
    known = {package for packages in MIGRATIONS.values() for package in packages}
    assert found - known == {"servers.credits.shard_migrations"}, "a new migrations package: add it to MIGRATIONS"


def test_the_token_store_goes_all_the_way_down_and_up_again(store_config: dict[str, str]) -> None:
    """Every down migration of the token service's store (mesh tables included) really runs."""
    assert shieldx(store_config, "migrate", "up", "--service", "tokens").returncode == 0
    dialect = "postgres" if store_config["database_url"] else "sqlite"
    count = sum(len(discover_migrations(p, dialect)) for p in MIGRATIONS["tokens"])
    down = shieldx(store_config, "migrate", "down", str(count), "--service", "tokens")
    assert down.returncode == 0, down.stderr
    status = shieldx(store_config, "migrate", "status", "--service", "tokens")
    assert status.stdout.count(" pending") == count and " applied" not in status.stdout, status.stdout
    assert shieldx(store_config, "migrate", "up", "--service", "tokens").returncode == 0
