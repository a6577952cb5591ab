"""First start of the token service: the admin client, one workload client per server, their credentials.

On a store without any client (and with `bootstrap` on), `bootstrap` registers `admin` (a
person allowed every scope any contract declares) and one workload client per server with
the scopes that server needs to call its peers, and writes their one-time secrets to
`<data_dir>/credentials` (mode 0600) for `shieldx up`, the servers and the CLI. The clients
are inserted and the file written in one transaction that commits only after the file is on
disk, so a crash leaves either nothing (the next start bootstraps again) or both. Once any
client exists, bootstrap does nothing.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from datetime import UTC, datetime
from pathlib import Path

from clients.credentials import CREDENTIALS_FILE, ClientCredentials, CredentialsFile
from servers.mesh import storage
from servers.mesh.auth import rules_from_contracts
from servers.mesh.config import MeshConfig
from servers.tokens.domain import Client, ClientKind, ClientSpec, SecretChecker, register_client
from servers.tokens.store import TokenStore

log = logging.getLogger(__name__)

ADMIN = "admin"
"""Principal (and client id) of the operator credentials."""

_EVERY_SERVER = frozenset({"tokens.watch", "deployment.read", "deployment.register", "flags.evaluate"})
WORKLOAD_SCOPES: dict[str, frozenset[str]] = {
    "tokens": _EVERY_SERVER | {"deception.write"},
    "credits": _EVERY_SERVER | {"sharding.topology", "compliance.alert"},
    "deployment": _EVERY_SERVER,
    "sharding": _EVERY_SERVER,
    "compliance": _EVERY_SERVER
    | {
        "credits.admin",
        "credits.read",
        "tokens.read",
        "deployment.read",
        "sharding.read",
        "deception.read",
        "mesh.posture",
    },
    "deception": _EVERY_SERVER | {"compliance.alert"},
}
"""Scopes of each server's workload client: what it calls on its peers."""


def contract_scopes() -> frozenset[str]:
    """Every scope any RPC declares, read from the service descriptors of all `shieldx.*.v1` modules."""
    import shieldx

    services = []
    for package in pkgutil.iter_modules(shieldx.__path__):
        try:
            version = importlib.import_module(f"shieldx.{package.name}.v1")
        except ModuleNotFoundError:
            continue
        for module in pkgutil.iter_modules(version.__path__):
            if module.name.endswith("_pb2"):
                descriptor = importlib.import_module(f"{version.__name__}.{module.name}").DESCRIPTOR
                services.extend(descriptor.services_by_name.values())
    return frozenset(rule.scope for rule in rules_from_contracts(services).values() if rule.scope and not rule.public)


def bootstrap_specs(audience: str) -> dict[str, ClientSpec]:
    """The clients a first start registers, by principal name."""
    specs = {
        ADMIN: ClientSpec(
            client_id=ADMIN,
            kind=ClientKind.PERSON,
            allowed_scopes=contract_scopes(),
            allowed_audiences=(audience,),
            display_name="Administrator (bootstrap)",
        )
    }
    for server, scopes in WORKLOAD_SCOPES.items():
        specs[server] = ClientSpec(
            client_id=server,
            kind=ClientKind.WORKLOAD,
            allowed_scopes=scopes,
            allowed_audiences=(audience,),
            display_name=f"{server} server (bootstrap)",
        )
    return specs


def credentials_path(config: MeshConfig) -> Path:
    """Where the credentials file lives: `auth.credentials_file`, else `<data_dir>/credentials`."""
    return Path(config.auth.credentials_file) if config.auth.credentials_file else config.data_path / CREDENTIALS_FILE


def token_endpoint(config: MeshConfig) -> str:
    """How clients reach this token service: its configured endpoint, else the address it binds."""
    if "tokens" in config.endpoints:
        return config.endpoints["tokens"]
    host = "127.0.0.1" if config.host in ("", "0.0.0.0", "::") else config.host
    return f"{host}:{config.port}"


def follow_endpoint(path: Path, endpoint: str) -> bool:
    """Point the credentials file at `endpoint`, where this token service listens now; True if it
    named another (a restart on other ports: every server reads its token endpoint there)."""
    credentials = CredentialsFile.load(path)
    if credentials.token_endpoint == endpoint:
        return False
    log.info(
        "credentials file now names this token service", extra={"was": credentials.token_endpoint, "now": endpoint}
    )
    credentials.token_endpoint = endpoint
    credentials.save(path)
    return True


async def bootstrap(
    store: TokenStore, secrets: SecretChecker, path: Path, endpoint: str, audience: str
) -> CredentialsFile | None:
    """Register the bootstrap clients and write their credentials, if no client exists yet.

    Returns the credentials written, or None when there was nothing to do (a later start,
    or another replica sharing the database bootstrapped first).
    """
    if await store.has_clients():
        if not await asyncio.to_thread(path.exists):
            log.warning("clients exist but the credentials file is missing", extra={"path": str(path)})
        else:
            await asyncio.to_thread(follow_endpoint, path, endpoint)
        return None
    now = datetime.now(UTC)
    specs = bootstrap_specs(audience)

    def register_all() -> dict[str, tuple[Client, str]]:
        # Argon2id per client: seconds of CPU at most, off the event loop.
        return {name: register_client(spec, secrets, now) for name, spec in specs.items()}

    registered = await asyncio.to_thread(register_all)
    credentials = CredentialsFile(
        token_endpoint=endpoint,
        clients={
            name: ClientCredentials(
                client_id=client.client_id,
                client_secret=secret,
                scopes=tuple(sorted(client.allowed_scopes)),
                audience=audience,
            )
            for name, (client, secret) in registered.items()
        },
    )
    try:
        async with store.database.transaction() as tx:
            for client, _ in registered.values():
                await store.insert_client(tx, client)
            await asyncio.to_thread(credentials.save, path)
    except storage.UniqueViolation:
        log.info("another replica bootstrapped the clients first")
        return None
    log.info("bootstrapped clients", extra={"clients": sorted(specs), "credentials": str(path)})
    return credentials
