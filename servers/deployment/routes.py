"""Traffic routes on the deployment server: registered instances, checked weights, built routes.

A route gives each version of a service a weight in basis points (the weights sum to
10000) and lists the addresses of its instances. The route types and the picker callers
use live with the client (`clients.routes`); this module validates what is registered and
builds the routes the server publishes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from clients.routes import Route, VersionRoute
from servers.mesh.errors import InvalidArgument, PermissionDenied

TOTAL_BASIS_POINTS = 10_000
"""What the weights of a route sum to."""

ADMIN_SCOPE = "deployment.admin"
"""A caller holding it may register and deregister instances of any service (operators)."""

_SERVICE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_METADATA_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)$")


def check_service(service: str, field_name: str = "service") -> str:
    """`service` if it is a valid service name (`credits`, `deployment`...), else InvalidArgument."""
    if not _SERVICE.match(service):
        raise InvalidArgument(field_name, "is a lowercase name: letters, digits and '-', at most 63 characters")
    return service


def check_version(version: str, field_name: str = "version") -> str:
    """`version` if it is a valid version name (`v2`, `1.4.0`, `green`...), else InvalidArgument."""
    if not _VERSION.match(version):
        raise InvalidArgument(field_name, "is letters, digits, '.', '_' and '-', at most 63 characters")
    return version


def check_address(address: str, field_name: str = "address") -> str:
    """`address` if it is `host:port` (IPv6 in brackets), else InvalidArgument."""
    host, _, port = address.rpartition(":")
    if not host or not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(field_name, "must be host:port with a port from 1 to 65535")
    return address


def check_metrics_endpoint(
    url: str, field_name: str = "metrics_endpoint", *, address: str = "", allowed_hosts: Iterable[str] = ()
) -> str:
    """`url` if empty or an http(s) URL with a host, else InvalidArgument.

    With an instance `address`, the URL's host must be that address's host or one of
    `allowed_hosts` (METRICS_HOST_NOT_ALLOWED): the controller fetches these URLs, so an
    instance may not point it at another machine (a metadata service, an internal API).
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidArgument(field_name, f"is not a URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(field_name, "must be an http:// or https:// URL")
    if address:
        host = parts.hostname.lower().rstrip(".")
        own = address.rpartition(":")[0].strip("[]").lower().rstrip(".")
        same = host == own or (_is_loopback(host) and _is_loopback(own))
        if not same and host not in {h.lower().rstrip(".") for h in allowed_hosts}:
            raise InvalidArgument(
                field_name,
                f"must be on the instance's own host {own!r} (or a host the deployment server allows)",
                reason="METRICS_HOST_NOT_ALLOWED",
            )
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_registrant(service: str, client_id: str, scopes: frozenset[str]) -> None:
    """PermissionDenied (INSTANCE_OF_ANOTHER_SERVICE) unless the caller may register or
    deregister instances of `service`: that service's own workload (its token's client id is the
    service name), or an operator holding `deployment.admin`. Without auth (no client id) the
    server trusts every caller, as for every other RPC."""
    if not client_id or client_id == service or ADMIN_SCOPE in scopes:
        return
    raise PermissionDenied(
        f"workload {client_id!r} may register and deregister only instances of its own service, not {service!r}",
        reason="INSTANCE_OF_ANOTHER_SERVICE",
    )


def check_sticky_key(key: str, field_name: str = "sticky_metadata_key") -> str:
    """`key` if empty or a usable gRPC metadata key (lowercase ASCII, not `grpc-*`, not binary)."""
    if not key:
        return key
    if not _METADATA_KEY.match(key) or key.startswith("grpc-") or key.endswith("-bin"):
        raise InvalidArgument(field_name, "must be a lowercase ASCII metadata key, not grpc-* or *-bin")
    return key


@dataclass(frozen=True)
class Instance:
    """One registered instance of one version of a service."""

    service: str
    """The service it serves."""
    version: str
    """The version it runs."""
    address: str
    """`host:port` of its gRPC server; unique per service."""
    metrics_endpoint: str
    """URL of its `/metrics`, or empty."""
    registered_at: datetime
    """When it was (last) registered."""


def new_instance(
    service: str,
    version: str,
    address: str,
    metrics_endpoint: str,
    at: datetime,
    *,
    metrics_hosts: Iterable[str] = (),
) -> Instance:
    """Validate a RegisterInstance request (metrics on the instance's host or one of `metrics_hosts`)."""
    return Instance(
        service=check_service(service),
        version=check_version(version),
        address=check_address(address),
        metrics_endpoint=check_metrics_endpoint(metrics_endpoint, address=address, allowed_hosts=metrics_hosts),
        registered_at=at,
    )


def check_weights(weights: Sequence[tuple[str, int]], field_name: str = "weights") -> dict[str, int]:
    """Validated (version, basis points) pairs: each 0..10000, distinct, summing to 10000."""
    if not weights:
        raise InvalidArgument(field_name, "needs at least one version")
    checked: dict[str, int] = {}
    for i, (version, weight) in enumerate(weights):
        check_version(version, f"{field_name}[{i}].version")
        if version in checked:
            raise InvalidArgument(f"{field_name}[{i}].version", f"{version!r} is listed twice")
        if not 0 <= weight <= TOTAL_BASIS_POINTS:
            raise InvalidArgument(f"{field_name}[{i}].weight_bp", f"must be from 0 to {TOTAL_BASIS_POINTS}")
        checked[version] = weight
    if sum(checked.values()) != TOTAL_BASIS_POINTS:
        raise InvalidArgument(field_name, f"weights sum to {sum(checked.values())}, not {TOTAL_BASIS_POINTS}")
    return checked


def split_weights(from_version: str, to_version: str, to_percent: int) -> dict[str, int]:
    """Weights putting `to_percent` % on `to_version` and the rest on `from_version`."""
    if not 0 <= to_percent <= 100:
        raise ValueError(f"a traffic share is 0..100 %, not {to_percent}")
    to_weight = to_percent * TOTAL_BASIS_POINTS // 100
    return {from_version: TOTAL_BASIS_POINTS - to_weight, to_version: to_weight}


def weights_after_registration(weights: Mapping[str, int], version: str) -> dict[str, int]:
    """A service's weights once an instance of `version` registers.

    The first version of a service takes all traffic; a later one joins with no weight until
    a deployment (or SetRouteWeights) gives it some, so starting a canary never shifts
    traffic by itself.
    """
    if not weights or sum(weights.values()) == 0:
        return {**{v: 0 for v in weights}, version: TOTAL_BASIS_POINTS}
    if version in weights:
        return dict(weights)
    return {**weights, version: 0}


def build_route(
    service: str,
    weights: Mapping[str, int],
    instances: Iterable[Instance],
    *,
    revision: int,
    sticky_metadata_key: str = "",
    updated_at: datetime | None = None,
) -> Route:
    """The route of `service` from its weights and its registered instances."""
    addresses: dict[str, list[str]] = {version: [] for version in weights}
    for instance in instances:
        if instance.service == service:
            addresses.setdefault(instance.version, []).append(instance.address)
    versions = tuple(
        VersionRoute(version, weights.get(version, 0), tuple(sorted(addresses[version])))
        for version in sorted(addresses)
    )
    return Route(service, revision, versions, sticky_metadata_key, updated_at)
