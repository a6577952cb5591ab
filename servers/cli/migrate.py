"""`shieldx migrate status | up`: see and apply each service's schema migrations, before a release starts.

Servers also apply pending migrations when they start; running `migrate up` first (a Kubernetes
Job or init container, the compose `migrate` service) applies them once per release, so replicas
starting together never race, and a failing migration stops the rollout before any pod runs.
The store of each service is the one its server would open: PostgreSQL (`SHIELDX_DATABASE_URL`,
the schema named after the service) or `<data dir>/<service>.db`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from servers.mesh.config import load_config
from servers.mesh.storage import Database, discover_migrations, open_database

MIGRATIONS: dict[str, tuple[str, ...]] = {
    "tokens": ("servers.mesh.migrations", "servers.tokens.migrations"),
    "credits": ("servers.mesh.migrations", "servers.credits.migrations", "servers.credits.coordinator_migrations"),
    "deployment": ("servers.mesh.migrations", "servers.deployment.migrations"),
    "sharding": ("servers.mesh.migrations", "servers.sharding.migrations"),
    "deception": ("servers.mesh.migrations", "servers.deception.migrations"),
}
"""The migration packages each service's store applies, in order (compliance keeps no store)."""


def register(commands: Any) -> None:
    """Add `migrate status` and `migrate up`."""
    migrate = commands.add_parser("migrate", help="schema migrations of each service's store")
    actions = migrate.add_subparsers(dest="action", required=True)
    for action, text, run in (
        ("status", "applied and pending migrations per service (exit 1 if any is pending)", _status),
        ("up", "apply every pending migration", _up),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument(
            "--service", action="append", choices=sorted(MIGRATIONS), help="only this service (repeatable)"
        )
        parser.add_argument("--config", help="YAML config file (as the servers read it)")
        parser.set_defaults(run=run, parser=parser)


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


def _status(args: argparse.Namespace) -> int:
    async def report() -> int:
        pending_anywhere = 0
        for service in args.service or MIGRATIONS:
            database = await _open(service, args)
            try:
                applied = await database.applied_migrations()
            finally:
                await database.close()
            for package in MIGRATIONS[service]:
                for migration in discover_migrations(package, database.dialect):
                    done = (package, migration.version) in applied
                    pending_anywhere += not done
                    state = "applied" if done else "pending"
                    print(f"{service:<11} {package:<40} {migration.version:04d} {migration.name:<24} {state}")
        return 1 if pending_anywhere else 0

    return asyncio.run(report())


def _up(args: argparse.Namespace) -> int:
    async def apply() -> int:
        for service in args.service or MIGRATIONS:
            database = await _open(service, args)
            try:
                for package in MIGRATIONS[service]:
                    versions = await database.migrate(package)
                    if versions:
                        print(f"{service}: {package} applied {', '.join(f'{v:04d}' for v in versions)}")
            finally:
                await database.close()
        print("all migrations applied")
        return 0

    return asyncio.run(apply())
