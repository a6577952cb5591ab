"""`shieldx migrate status | up | down N | restore FILE`: each service's schema migrations, with a backup first.

Servers also apply pending migrations when they start; running `migrate up` first (a Kubernetes
Job, the compose `migrate` service) applies them once per release, so replicas starting together
never race, and a failing migration stops the rollout before any pod runs. The store of each
service is the one its server would open: PostgreSQL (`SHIELDX_DATABASE_URL`, the schema named
after the service) or `<data dir>/<service>.db`.

Before `up` or `down` changes a store, it is copied to `<data dir>/backups/<service>-<UTC time>`
(`.db`: SQLite's online backup API; `.dump`: `pg_dump` of the service's schema), which
`migrate restore FILE` loads back; stop the service's servers before a restore.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servers.mesh.config import load_config
from servers.mesh.storage import Database, Migration, discover_migrations, open_database

MIGRATIONS: dict[str, tuple[str, ...]] = {
    "tokens": ("servers.mesh.migrations", "servers.tokens.migrations"),
    "credits": ("servers.mesh.migrations", "servers.credits.migrations", "servers.credits.coordinator_migrations"),
    "deployment": ("servers.mesh.migrations", "servers.deployment.migrations", "servers.deployment.chaos.migrations"),
    "sharding": ("servers.mesh.migrations", "servers.sharding.migrations"),
    "deception": ("servers.mesh.migrations", "servers.deception.migrations"),
    "compliance": ("servers.mesh.migrations", "servers.compliance.migrations"),
}
"""The migration packages each service's store applies, in order (what its `runtime.database` call
names; credits' shard_migrations belong to the shards, which the sharding service registers)."""

BACKUPS = "backups"


def register(commands: Any) -> None:
    """Add `migrate status | up | down N | restore FILE`."""
    migrate = commands.add_parser("migrate", help="schema migrations of each service's store, backups, restores")
    actions = migrate.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="applied and pending migrations per service (exit 1 if any pending)")
    up = actions.add_parser("up", help="back up, then apply every pending migration")
    down = actions.add_parser("down", help="back up, then revert the newest N applied migrations of a service")
    down.add_argument("count", type=int, metavar="N", help="how many migrations to revert")
    restore = actions.add_parser("restore", help="load a backup made by up/down back into its service's store")
    restore.add_argument("file", type=Path, metavar="FILE", help="<data dir>/backups/<service>-<time>.db or .dump")
    for parser, run in ((status, _status), (up, _up), (down, _down), (restore, _restore)):
        parser.add_argument(
            "--service", action="append", choices=sorted(MIGRATIONS), help="only this service (repeatable)"
        )
        parser.add_argument("--config", help="YAML config file (as the servers read it)")
        parser.set_defaults(run=run, parser=parser)


def _services(args: argparse.Namespace) -> list[str]:
    return list(args.service or MIGRATIONS)


async def _open(service: str, args: argparse.Namespace) -> Database:
    config = load_config(service, args.config)
    if not config.database_url:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    return await open_database(
        service,
        data_dir=args.data_dir,
        database_url=config.database_url,
        schema=config.database_schema or None,
    )


def _migrations(service: str, database: Database) -> list[Migration]:
    return [m for package in MIGRATIONS[service] for m in discover_migrations(package, database.dialect)]


async def _backup(service: str, database: Database, args: argparse.Namespace) -> Path:
    directory = Path(args.data_dir) / BACKUPS
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"{service}-{stamp}.{'dump' if database.dialect == 'postgres' else 'db'}"
    # Created 0600 before anything is written: a backup holds everything the store does.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    await database.backup(path)
    os.chmod(path, 0o600)
    print(f"{service}: backed up to {path}")
    return path


def _status(args: argparse.Namespace) -> int:
    async def report() -> int:
        pending = 0
        for service in _services(args):
            database = await _open(service, args)
            try:
                applied = await database.applied_migrations()
            finally:
                await database.close()
            for migration in _migrations(service, database):
                done = (migration.package, migration.version) in applied
                pending += not done
                state = "applied" if done else "pending"
                print(f"{service:<11} {migration.package:<40} {migration.version:04d} {migration.name:<24} {state}")
        return 1 if pending else 0

    return asyncio.run(report())


def _up(args: argparse.Namespace) -> int:
    async def apply() -> int:
        for service in _services(args):
            database = await _open(service, args)
            try:
                applied = await database.applied_migrations()
                if any((m.package, m.version) not in applied for m in _migrations(service, database)):
                    await _backup(service, database, args)
                for package in MIGRATIONS[service]:
                    versions = await database.migrate(package)
                    if versions:
                        print(f"{service}: {package} applied {', '.join(f'{v:04d}' for v in versions)}")
            finally:
                await database.close()
        print("all migrations applied")
        return 0

    return asyncio.run(apply())


def _down(args: argparse.Namespace) -> int:
    if args.count < 1:
        args.parser.error("N: must be at least 1")
    if not args.service or len(args.service) != 1:
        args.parser.error("--service: name the one service whose migrations to revert")
    service = args.service[0]

    async def revert() -> int:
        database = await _open(service, args)
        try:
            applied = await database.applied_migrations()
            newest_first = [m for m in reversed(_migrations(service, database)) if (m.package, m.version) in applied]
            chosen = newest_first[: args.count]
            if len(chosen) < args.count:
                args.parser.error(f"N: only {len(chosen)} migrations of {service} are applied")
            missing = [m for m in chosen if m.down is None]
            if missing:
                args.parser.error(f"N: {missing[0].package} {missing[0].version:04d} has no down migration")
            await _backup(service, database, args)
            for migration in chosen:
                await database.revert(migration)
                print(f"{service}: {migration.package} reverted {migration.version:04d} {migration.name}")
        finally:
            await database.close()
        return 0

    return asyncio.run(revert())


def _restore(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    match = re.fullmatch(r"([a-z]+)-\d{8}T\d+Z\.(db|dump)", args.file.name)
    named: str | None = args.service[0] if args.service else (match[1] if match else None)
    if named is None or named not in MIGRATIONS:
        parser.error("--service: name the service (the file name does not say which)")
    if not args.file.is_file():
        parser.error(f"FILE: {args.file} does not exist")
    service: str = named

    async def load() -> int:
        database = await _open(service, args)
        try:
            expected = "dump" if database.dialect == "postgres" else "db"
            if args.file.suffix != f".{expected}":
                args.parser.error(f"FILE: a {database.dialect} store restores from a .{expected} backup")
            await database.restore(args.file)
        finally:
            await database.close()
        print(f"{service}: restored from {args.file}")
        return 0

    return asyncio.run(load())
