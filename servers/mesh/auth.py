"""Mesh authentication: bearer tokens verified locally, and each RPC's declared scope enforced.

The required scope of every RPC is read from its contract (`shieldx.mesh.v1.auth` method
option) when the server starts. Health and reflection stay open; an RPC that declares no
rule is closed to everyone.
"""

from __future__ import annotations

import contextvars
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.descriptor import ServiceDescriptor

from servers.mesh import errors, status
from servers.mesh.interception import CallInterceptor, Context, Method, finalized_elsewhere
from shieldx.mesh.v1 import options_pb2


class VerifiedToken(Protocol):
    """What the interceptor needs from verified token claims."""

    @property
    def scope(self) -> frozenset[str]: ...
    @property
    def client_id(self) -> str: ...
    @property
    def sub(self) -> str: ...
    @property
    def jti(self) -> str: ...


class BearerVerifier(Protocol):
    """Verifies a bearer token locally (signature, audience, time, revocation)."""

    def verify(self, token: str) -> VerifiedToken: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is making the current call, as proven by their token."""

    client_id: str
    """The token service client the token was issued to."""
    subject: str
    """The token's `sub` (a workload or a person)."""
    scopes: frozenset[str]
    """Scopes the token grants."""
    token_id: str
    """The token's `jti`."""


ANONYMOUS = Caller(client_id="", subject="anonymous", scopes=frozenset(), token_id="")
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("shieldx_caller", default=ANONYMOUS)


def peer_address(peer: str) -> str:
    """The caller's address from a gRPC peer string: `ipv4:10.0.0.7:5050` → `10.0.0.7`,
    `ipv6:%5B::1%5D:5050` → `::1`; other forms (unix sockets) are returned as they are."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return urllib.parse.unquote(rest).rsplit(":", 1)[0].strip("[]")
    return peer


def current_caller() -> Caller:
    """The authenticated caller of the RPC being handled (ANONYMOUS outside one or without auth)."""
    return _caller.get()


@dataclass(frozen=True, slots=True)
class Rule:
    """The authorisation rule of one RPC."""

    scope: str
    public: bool


def rules_from_contracts(
    services: Iterable[ServiceDescriptor], foreign_scopes: Mapping[str, str] | None = None
) -> dict[str, Rule]:
    """Method path → rule, from the `shieldx.mesh.v1.auth` option of every RPC; a service named in
    `foreign_scopes` (a contract we do not own, so without the option) needs that scope throughout."""
    rules: dict[str, Rule] = {}
    for service in services:
        foreign = (foreign_scopes or {}).get(service.full_name)
        for method in service.methods:
            if foreign:
                rules[f"/{service.full_name}/{method.name}"] = Rule(foreign, public=False)
                continue
            options = method.GetOptions()
            if not options.HasExtension(options_pb2.auth):
                continue
            declared = options.Extensions[options_pb2.auth]
            rules[f"/{service.full_name}/{method.name}"] = Rule(declared.scope, declared.public)
    return rules


def bearer_token(metadata: Iterable[Any]) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if any."""
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class AuthInterceptor(CallInterceptor[contextvars.Token[Caller] | None]):
    """UNAUTHENTICATED without a valid token; PERMISSION_DENIED without the RPC's scope."""

    def __init__(
        self,
        verifier: BearerVerifier,
        rules: Mapping[str, Rule],
        reverify: Callable[[str], Awaitable[VerifiedToken]] | None = None,
    ) -> None:
        """`reverify` is tried once when a token names an unknown key (e.g. after a rotation)."""
        self._verifier = verifier
        self._rules = dict(rules)
        self._reverify = reverify

    def applies_to(self, method: Method) -> bool:
        return not method.is_infrastructure

    async def enter(self, method: Method, context: Context, request: Any) -> contextvars.Token[Caller] | None:
        rule = self._rules.get(method.path)
        if rule is not None and rule.public:
            return None
        token = bearer_token(context.invocation_metadata())
        if token is None:
            await status.abort(
                context,
                errors.Unauthenticated("a bearer token is required", reason="TOKEN_MISSING"),
                "shieldx.mesh",
            )
        try:
            claims = self._verifier.verify(token)
        except errors.Unauthenticated as error:
            claims = await self._second_chance(context, token, error)
        if rule is None or not rule.scope:
            await status.abort(
                context,
                errors.PermissionDenied(f"{method.span_name} declares no scope", reason="RPC_CLOSED"),
                "shieldx.mesh",
            )
        if rule.scope not in claims.scope:
            await status.abort(
                context,
                errors.PermissionDenied(
                    f"the token lacks scope {rule.scope!r}",
                    reason="SCOPE_MISSING",
                    metadata={"required_scope": rule.scope},
                ),
                "shieldx.mesh",
            )
        return _caller.set(Caller(claims.client_id, claims.sub, claims.scope, claims.jti))

    async def _second_chance(self, context: Context, token: str, error: errors.Unauthenticated) -> VerifiedToken:
        if self._reverify is None or error.reason != "TOKEN_UNKNOWN_KEY":
            await status.abort(context, error, "shieldx.mesh")
        try:
            return await self._reverify(token)
        except errors.Unauthenticated as again:
            await status.abort(context, again, "shieldx.mesh")

    async def exit(
        self,
        method: Method,
        context: Context,
        state: contextvars.Token[Caller] | None,
        error: BaseException | None,
    ) -> None:
        if state is not None and not finalized_elsewhere(error):
            _caller.reset(state)
