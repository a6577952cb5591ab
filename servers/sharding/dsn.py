"""Database connection strings of shard nodes: validation, and redaction before anything logs them.

Both libpq forms are accepted: URIs (`postgresql://user:secret@db1:5432/credits?sslmode=require`,
several hosts allowed) and keyword/value strings (`host=db1 port=5432 password='s e'`), plus
`sqlite:///path` for the single-shard embedded store. A DSN may hold a password, so it must
never reach a log, an error message or a trace: `redact_dsn` is safe on any input, even
malformed, and `dsn_endpoint` gives the credential-free `host:port/dbname` to show instead.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Collection, Iterator
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from servers.mesh.errors import InvalidArgument

MAX_DSN_LENGTH = 4096
"""Longest DSN accepted."""
REDACTED = "***"
"""What a secret is replaced with."""
ALLOWED_PARAMETERS = frozenset(
    {
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "connect_timeout",
        "sslmode",
        "channel_binding",
        "gssencmode",
        "application_name",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    }
)
"""The libpq parameters a shard's DSN may set: where the server is, who connects and how (TLS
mode, timeouts, keepalives). Parameters that make the sharding server read a file (`sslkey`,
`sslcert`, `sslrootcert`, `sslcrl`, `passfile`, `service`, ...) or set session options
(`options`) are refused: TLS roots come from the server's own environment (`PGSSLROOTCERT`)."""

METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "fd00:ec2::254",
        "100.100.100.200",
    }
)
"""Cloud instance-metadata endpoints outside the link-local ranges (GCP, Azure, AWS IPv6,
Alibaba); with 169.254.0.0/16 and fe80::/10 a shard may not name them unless allowed."""

_URI_SCHEMES = ("postgresql", "postgres")
_SQLITE_SCHEME = "sqlite"
_SECRET_KEYWORDS = frozenset({"password", "sslpassword"})
# libpq keyword/value grammar: key = value, value bare or single-quoted with \' and \\ escapes.
_KEYWORD_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)\s*")
# Fallbacks used when a DSN does not parse, so redaction never depends on well-formed input.
_ANY_SECRET_PAIR = re.compile(r"(?i)((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]*)")
_ANY_USERINFO = re.compile(r"(//[^/@:?#]*):[^@/]*@")


def is_uri(dsn: str) -> bool:
    """True for the URI form (`scheme://...` or `sqlite:...`), False for keyword/value."""
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", dsn)) and "=" not in dsn.split(":", 1)[0]


def validate_dsn(dsn: str, field: str = "dsn") -> None:
    """Raise InvalidArgument (naming `field`, never echoing the DSN) unless `dsn` is usable."""
    if not dsn.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(dsn) > MAX_DSN_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_DSN_LENGTH} characters")
    if any(ord(c) < 32 and c not in "\t" for c in dsn):
        raise InvalidArgument(field, "must not contain control characters")
    if is_uri(dsn):
        _validate_uri(dsn, field)
    else:
        _validate_keywords(dsn, field)
    refused = sorted(set(_parameters(dsn)) - ALLOWED_PARAMETERS)
    if refused:
        raise InvalidArgument(
            field,
            f"may set only {', '.join(sorted(ALLOWED_PARAMETERS))}; not {', '.join(refused)[:200]}",
            reason="DSN_PARAMETER_NOT_ALLOWED",
        )


def check_dsn_hosts(dsn: str, field: str = "dsn", allowed: Collection[str] = ()) -> None:
    """Raise InvalidArgument (reason DSN_HOST_NOT_ALLOWED) if `dsn` names a link-local address
    (169.254.0.0/16, fe80::/10, also IPv4-mapped or in the legacy numeric forms libpq's resolver
    accepts) or a cloud metadata host, unless `allowed` lists that host. Names are checked as
    written, never resolved: nothing leaves the process. `dsn` must already be valid."""
    permitted = {host.lower().rstrip(".") for host in allowed}
    for host in _hosts(dsn):
        name = host.lower().rstrip(".")
        if name in permitted or not _is_forbidden_host(name):
            continue
        raise InvalidArgument(
            field,
            f"must not name the link-local or metadata address {host[:64]!r} (allow it in config if meant)",
            reason="DSN_HOST_NOT_ALLOWED",
        )


def _is_forbidden_host(name: str) -> bool:
    if name in METADATA_HOSTS:
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        if ":" in name or name.startswith("/"):
            return False
        try:  # 2852039166, 0xa9fea9fe, 169.254.43518: what inet_aton (and so libpq) accepts
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_link_local or str(address) in METADATA_HOSTS


def _parameters(dsn: str) -> Iterator[str]:
    """The libpq parameter names `dsn` sets (a valid DSN): URI parts count as host, user, password, dbname."""
    if not is_uri(dsn):
        yield from (key for key, _ in _parse_keywords(dsn))
        return
    parts = urlsplit(dsn)
    if parts.scheme == _SQLITE_SCHEME:
        return
    yield from (key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True))


def _hosts(dsn: str) -> Iterator[str]:
    """Every host and hostaddr a valid DSN names (a list may hold several)."""
    if not is_uri(dsn):
        values = {key: _unquote(value) for key, value in _parse_keywords(dsn)}
        for key in ("host", "hostaddr"):
            yield from filter(None, values.get(key, "").split(","))
        return
    parts = urlsplit(dsn)
    if parts.scheme == _SQLITE_SCHEME:
        return
    for host in filter(None, parts.netloc.rpartition("@")[2].split(",")):
        yield unquote(host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0])
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in ("host", "hostaddr"):
            yield from filter(None, value.split(","))


def redact_dsn(dsn: str) -> str:
    """`dsn` with every password replaced by `***`; safe to log. Never raises."""
    try:
        if is_uri(dsn):
            return _redact_uri(dsn)
        pairs = _parse_keywords(dsn)
    except ValueError:
        return _redact_anyhow(dsn)
    return " ".join(f"{key}={REDACTED if key in _SECRET_KEYWORDS else value}" for key, value in pairs)


def dsn_endpoint(dsn: str) -> str:
    """Where the DSN points, without credentials: `host:port/dbname` (or `sqlite:path`)."""
    try:
        if is_uri(dsn):
            return _uri_endpoint(dsn)
        values = {key: _unquote(value) for key, value in _parse_keywords(dsn)}
    except ValueError:
        return "(unparseable dsn)"
    host = values.get("host") or values.get("hostaddr") or "localhost"
    port = values.get("port")
    where = ",".join(f"{h}:{port}" if port else h for h in host.split(","))
    database = values.get("dbname", "")
    return f"{where}/{database}" if database else where


def _validate_uri(dsn: str, field: str) -> None:
    try:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError as exc:
        raise InvalidArgument(field, "is not a valid connection URI") from exc
    if parts.scheme == _SQLITE_SCHEME:
        if not (parts.path or parts.netloc) or parts.path in ("", "/"):
            raise InvalidArgument(field, "a sqlite DSN must name a database file, e.g. sqlite:///data/credits.db")
        return
    if parts.scheme not in _URI_SCHEMES:
        raise InvalidArgument(field, "must be a postgresql://, postgres:// or sqlite: URI, or key=value pairs")
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts and not query.get("host"):
        raise InvalidArgument(field, "must name a host (in the URI or as ?host=)")
    for host in filter(None, hosts.split(",")):
        _validate_host_port(host, field)


def _validate_host_port(host: str, field: str) -> None:
    if host.startswith("["):
        closing = host.find("]")
        if closing < 0:
            raise InvalidArgument(field, "has an unterminated IPv6 address")
        port = host[closing + 1 :].removeprefix(":")
    else:
        port = host.partition(":")[2]
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidArgument(field, "has a port that is not a number between 1 and 65535")


def _validate_keywords(dsn: str, field: str) -> None:
    try:
        values = {key: _unquote(value) for key, value in _parse_keywords(dsn)}
    except ValueError as exc:
        raise InvalidArgument(field, "must be a URI or space-separated key=value pairs") from exc
    if not (values.get("host") or values.get("hostaddr")):
        raise InvalidArgument(field, "must name a host (host= or hostaddr=)")
    port = values.get("port")
    if port is not None:
        for one in port.split(","):
            if not (one.isdigit() and 1 <= int(one) <= 65535):
                raise InvalidArgument(field, "has a port that is not a number between 1 and 65535")


def _parse_keywords(dsn: str) -> list[tuple[str, str]]:
    """Keyword/value pairs with values as written (quotes kept); ValueError if malformed."""
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(dsn):
        match = _KEYWORD_PAIR.match(dsn, position)
        if not match or match.end() == position:
            if dsn[position:].strip():
                raise ValueError("malformed key=value connection string")
            break
        pairs.append((match.group(1).lower(), match.group(2)))
        position = match.end()
    if not pairs:
        raise ValueError("empty connection string")
    return pairs


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _split_uri(dsn: str) -> tuple[str, str, str, str, str]:
    """(scheme + separator, user info, '@' or '', hosts and path, '?query#fragment' tail).

    Everything before the last '@' ahead of the query counts as user info, even if it holds
    a raw '/' or '@' that a URI parser would take for the path: over-redacting is the safe error.
    """
    scheme, _, rest = dsn.partition(":")
    slashes = "//" if rest.startswith("//") else ""
    rest = rest[len(slashes) :]
    head_end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    userinfo, at, location = rest[:head_end].rpartition("@")
    return f"{scheme}:{slashes}", userinfo, at, location, rest[head_end:]


def _redact_uri(dsn: str) -> str:
    prefix, userinfo, at, location, tail = _split_uri(dsn)
    if at and ":" in userinfo:
        userinfo = f"{userinfo.split(':', 1)[0]}:{REDACTED}"
    query, hash_sign, fragment = tail.removeprefix("?").partition("#") if tail.startswith("?") else ("", "", "")
    if not tail.startswith("?"):
        hash_sign, fragment = ("#", tail[1:]) if tail else ("", "")
    if query:
        query = "?" + "&".join(
            f"{key}={REDACTED if key.lower() in _SECRET_KEYWORDS else quote(value, safe='/:,.-_~')}"
            for key, value in parse_qsl(query, keep_blank_values=True)
        )
    return f"{prefix}{userinfo}{at}{location}{query}{hash_sign}{fragment}"


def _redact_anyhow(dsn: str) -> str:
    redacted = _ANY_USERINFO.sub(rf"\1:{REDACTED}@", dsn)
    return _ANY_SECRET_PAIR.sub(rf"\1{REDACTED}", redacted)


def _uri_endpoint(dsn: str) -> str:
    prefix, _, _, location, tail = _split_uri(dsn)
    if prefix.startswith(f"{_SQLITE_SCHEME}:"):
        return f"{_SQLITE_SCHEME}:{location}"
    hosts, _, database = location.partition("/")
    if not hosts:
        query = dict(parse_qsl(tail.removeprefix("?").partition("#")[0], keep_blank_values=True))
        hosts = query.get("host", "localhost")
    return f"{hosts}/{database}" if database else hosts
