"""Client credentials: the file `shieldx up` writes, and a token source that keeps a token fresh.

The file (`<data_dir>/credentials`, mode 0600) holds one entry per principal: `admin` for
people and tools, and one per server for the calls servers make to each other:

    {"token_endpoint": "127.0.0.1:8080",
     "clients": {"admin": {"client_id": "...", "client_secret": "...", "scopes": [...],
                           "audience": "shieldx"}, "credits": {...}, ...}}
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

from clients.errors import ShieldxError
from clients.secret_files import write_secret_file
from shieldx.tokens.v1 import tokens_pb2, tokens_pb2_grpc

CREDENTIALS_FILE = "credentials"


@dataclass(frozen=True)
class ClientCredentials:
    """One client of the token service."""

    client_id: str
    """The client id."""
    client_secret: str
    """Its secret (shown once by the token service; kept only in this file)."""
    scopes: tuple[str, ...] = ()
    """Scopes to request (empty: all the client is allowed)."""
    audience: str = "shieldx"
    """Audience to request."""


@dataclass
class CredentialsFile:
    """The whole credentials file."""

    token_endpoint: str
    """`host:port` of the token service."""
    clients: dict[str, ClientCredentials] = field(default_factory=dict)
    """Credentials by principal name (`admin`, `credits`, ...)."""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CredentialsFile:
        """Read a credentials file."""
        document = json.loads(Path(path).read_text())
        clients = {
            name: ClientCredentials(
                entry["client_id"],
                entry["client_secret"],
                tuple(entry.get("scopes", ())),
                entry.get("audience", "shieldx"),
            )
            for name, entry in document.get("clients", {}).items()
        }
        return cls(document["token_endpoint"], clients)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically with mode 0600 (the secrets never exist in a world-readable file)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {"token_endpoint": self.token_endpoint, "clients": {n: asdict(c) for n, c in self.clients.items()}}
        write_secret_file(target, (json.dumps(document, indent=2) + "\n").encode())


class ClientCredentialsTokenSource:
    """Obtains tokens with IssueToken and renews each once most of its lifetime has passed, or at
    once when a server refuses it as stale (`refused`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        credentials: ClientCredentials,
        *,
        ttl_seconds: float | None = None,
        renew_at_fraction: float = 0.75,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stub = tokens_pb2_grpc.TokenServiceStub(channel)
        self._credentials = credentials
        self._ttl = ttl_seconds
        self._renew_fraction = renew_at_fraction
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A valid token, fetched or renewed as needed."""
        if self._token and self._clock() < self._renew_at:
            return self._token
        async with self._lock:
            if not self._token or self._clock() >= self._renew_at:
                await self._issue()
        return self._token

    def refused(self, token: str) -> None:
        """A server refused `token` as stale (rotated key, revoked, expired): fetch a new one next time."""
        if token == self._token:
            self._renew_at = 0.0

    async def _issue(self) -> None:
        request = tokens_pb2.IssueTokenRequest(
            client_id=self._credentials.client_id,
            client_secret=self._credentials.client_secret,
            scopes=list(self._credentials.scopes),
            audience=self._credentials.audience,
        )
        if self._ttl:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=int(self._ttl)))
        try:
            reply = await self._stub.IssueToken(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            raise ShieldxError.from_rpc_error(error) from None
        issued, expires = reply.issue_time.ToSeconds(), reply.expire_time.ToSeconds()
        self._token = reply.access_token
        self._renew_at = issued + (expires - issued) * self._renew_fraction


class CredentialsFileTokenSource:
    """A token source for one principal of a credentials file, read when the first token is needed.

    Servers start before (or, for the token service, while) the file is written, so the file
    is read lazily; IssueToken goes over its own channel, which sends no bearer token.
    """

    def __init__(
        self, path: str | os.PathLike[str], principal: str, open_channel: Callable[[str], grpc.aio.Channel]
    ) -> None:
        self._path = Path(path)
        self._principal = principal
        self._open_channel = open_channel
        self._source: ClientCredentialsTokenSource | None = None

    async def token(self) -> str:
        """A valid token for the principal."""
        if self._source is None:
            if not self._path.exists():
                raise ShieldxError(grpc.StatusCode.UNAUTHENTICATED, f"no credentials file at {self._path}")
            credentials = CredentialsFile.load(self._path)
            client = credentials.clients.get(self._principal)
            if client is None:
                raise ShieldxError(grpc.StatusCode.UNAUTHENTICATED, f"{self._path} has no entry {self._principal!r}")
            self._source = ClientCredentialsTokenSource(self._open_channel(credentials.token_endpoint), client)
        return await self._source.token()

    def refused(self, token: str) -> None:
        """A server refused `token` as stale: the next `token()` fetches a new one."""
        if self._source is not None:
            self._source.refused(token)
