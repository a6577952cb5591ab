"""What each decoy says: one dialogue per protocol, in the imitated server's own words.

A dialogue reads through the `Connection`'s bounded reads, answers with the template's
fingerprint, records what the client revealed (credentials, client banner, commands) and
returns when the client leaves, misbehaves or exhausts its command budget. The listener
classifies and records the interaction afterwards.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from servers.deception.domain import Protocol
from servers.deception.recon import exploit_indicators
from servers.deception.templates import (
    FtpFingerprint,
    HttpFingerprint,
    MysqlFingerprint,
    RedisFingerprint,
    SmtpFingerprint,
    SshFingerprint,
    Template,
)
from servers.deception.wire import (
    ER_ACCESS_DENIED_ERROR,
    ER_HANDSHAKE_ERROR,
    RespParser,
    WireError,
    http_error_body,
    http_response,
    mysql_error,
    mysql_handshake,
    parse_kexinit,
    parse_mysql_login,
    parse_mysql_packet,
    parse_ssh_binary_packet,
    resp_bulk,
    resp_error,
    resp_integer,
    resp_simple,
    ssh_binary_packet,
    ssh_kexinit_payload,
)

if TYPE_CHECKING:
    from servers.deception.decoys import Connection

Dialogue = Callable[["Connection", Template], Awaitable[None]]
F = TypeVar("F")

HTTP_MAX_HEAD = 16 * 1024
HTTP_MAX_BODY = 32 * 1024


# --- HTTP -------------------------------------------------------------------------------------


async def converse_http(conn: Connection, template: Template) -> None:
    """Serve HTTP/1.1 requests (keep-alive) with a login page, login failures and error pages."""
    fingerprint = _fingerprint(template, HttpFingerprint)
    while True:
        head = await conn.read_until(b"\r\n\r\n", HTTP_MAX_HEAD)
        if head is None:
            if conn.bytes_received and not conn.peer_closed:
                await _http_send(conn, fingerprint, 400, b"", keep_alive=False, host="")
            return
        request = _parse_request(head)
        if request is None:
            await _http_send(conn, fingerprint, 400, b"", keep_alive=False, host="")
            return
        method, target, version, headers = request
        if not conn.note_command(f"{method} {target} {version}"):
            return
        conn.note_client_banner(headers.get("user-agent", ""))
        _note_basic_auth(conn, headers.get("authorization", ""))
        body = await _read_body(conn, headers)
        if body is None:
            await _http_send(
                conn,
                fingerprint,
                413 if _content_length(headers) else 400,
                b"",
                keep_alive=False,
                host=headers.get("host", ""),
            )
            return
        keep_alive = _keep_alive(version, headers)
        host = headers.get("host", "")
        status, page, extra = _route(conn, fingerprint, method, target, headers, body)
        if not await _http_send(
            conn, fingerprint, status, page, keep_alive=keep_alive, host=host, extra=extra, head_only=method == "HEAD"
        ):
            return
        if not keep_alive:
            return


def _parse_request(head: bytes) -> tuple[str, str, str, dict[str, str]] | None:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name:
            return None
        headers.setdefault(name.strip().lower(), value.strip())
    return parts[0].upper(), parts[1], parts[2], headers


def _content_length(headers: dict[str, str]) -> int:
    try:
        return max(0, int(headers.get("content-length", "0")))
    except ValueError:
        return -1


async def _read_body(conn: Connection, headers: dict[str, str]) -> bytes | None:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await conn.read_until(b"0\r\n\r\n", HTTP_MAX_BODY)
    length = _content_length(headers)
    if length < 0 or length > HTTP_MAX_BODY:
        return None
    if length == 0:
        return b""
    return await conn.read_exactly(length)


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _note_basic_auth(conn: Connection, authorization: str) -> None:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return
        user, _, password = decoded.partition(":")
        conn.note_credential(user, password)
    elif scheme.lower() == "bearer" and value:
        conn.note_credential("", value.strip())


def _route(
    conn: Connection, fingerprint: HttpFingerprint, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes, dict[str, str]]:
    path = urllib.parse.urlsplit(target).path or "/"
    host = headers.get("host", "")
    if method not in ("GET", "HEAD", "POST"):
        return 405, http_error_body(fingerprint, 405, _host_only(host, conn), conn.local_port), {}
    if path in ("/", "/login", "/index.php", "/signin") and method in ("GET", "HEAD"):
        return 200, _login_page(fingerprint, error=""), _session_cookie(fingerprint)
    if method == "POST" and path in ("/", "/login", "/index.php", "/signin"):
        user, password = _form_credentials(headers.get("content-type", ""), body)
        if user or password:
            conn.note_credential(user, password)
        return 200, _login_page(fingerprint, error="Invalid username or password."), _session_cookie(fingerprint)
    return 404, http_error_body(fingerprint, 404, _host_only(host, conn), conn.local_port), {}


def _host_only(host: str, conn: Connection) -> str:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return html.escape(name[:255]) or conn.local_address


def _form_credentials(content_type: str, body: bytes) -> tuple[str, str]:
    fields: dict[str, str] = {}
    if "json" in content_type.lower():
        try:
            data = json.loads(body.decode("utf-8", "replace"))
        except ValueError:
            data = None
        if isinstance(data, dict):
            fields = {str(k).lower(): str(v) for k, v in data.items() if isinstance(v, str | int)}
    else:
        text = body.decode("utf-8", "replace")
        fields = {k.lower(): v for k, v in urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=64)}
    user = next((fields[k] for k in ("username", "user", "login", "email", "log", "j_username") if k in fields), "")
    password = next((fields[k] for k in ("password", "pass", "passwd", "pwd", "j_password") if k in fields), "")
    return user, password


def _session_cookie(fingerprint: HttpFingerprint) -> dict[str, str]:
    if fingerprint.session_cookie == "PHPSESSID":
        value = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(26))
        return {"Set-Cookie": f"PHPSESSID={value}; path=/", "Cache-Control": "no-store, no-cache, must-revalidate"}
    return {
        "Set-Cookie": f"{fingerprint.session_cookie}={secrets.token_urlsafe(24)}; Path=/; HttpOnly; SameSite=Lax",
        "Cache-Control": "no-store",
    }


def _login_page(fingerprint: HttpFingerprint, error: str) -> bytes:
    title = html.escape(f"{fingerprint.app_title} · {fingerprint.organisation}")
    notice = f'    <p class="error" role="alert">{html.escape(error)}</p>\n' if error else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n  <meta charset="utf-8">\n'
        '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'  <title>{title}</title>\n  <link rel="stylesheet" href="/static/css/app.css">\n</head>\n<body>\n'
        f'  <main class="login">\n    <h1>{html.escape(fingerprint.organisation)}</h1>\n'
        f"    <h2>{html.escape(fingerprint.app_title)}</h2>\n{notice}"
        '    <form method="post" action="/login" autocomplete="off">\n'
        f'      <input type="hidden" name="{fingerprint.csrf_field}" value="{secrets.token_urlsafe(32)}">\n'
        '      <label for="username">Username</label>\n'
        '      <input id="username" name="username" type="text" required>\n'
        '      <label for="password">Password</label>\n'
        '      <input id="password" name="password" type="password" required>\n'
        '      <button type="submit">Sign in</button>\n    </form>\n  </main>\n</body>\n</html>\n'
    )
    return page.encode()


async def _http_send(
    conn: Connection,
    fingerprint: HttpFingerprint,
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    host: str,
    extra: dict[str, str] | None = None,
    head_only: bool = False,
) -> bool:
    if status >= 400 and not body:
        body = http_error_body(fingerprint, status, _host_only(host, conn), conn.local_port)
    content_type = "text/html; charset=utf-8"
    if status >= 400:
        content_type = "text/html" if fingerprint.product == "nginx" else "text/html; charset=iso-8859-1"
    response = http_response(
        fingerprint,
        status,
        body,
        now=datetime.now(UTC),
        content_type=content_type,
        keep_alive=keep_alive,
        extra=extra,
        head_only=head_only,
    )
    return await conn.send(response)


# --- SSH --------------------------------------------------------------------------------------


async def converse_ssh(conn: Connection, template: Template) -> None:
    """Exchange identification lines, then KEXINIT packets; hang up when the client starts the
    key exchange proper (the decoy holds no host key to answer with)."""
    fingerprint = _fingerprint(template, SshFingerprint)
    if not await conn.send(fingerprint.identification.encode("ascii") + b"\r\n"):
        return
    line = await conn.read_line(limit=255)
    if line is None:
        return
    if not line.startswith(b"SSH-"):
        conn.note_command(line.decode("latin-1")[:80])
        await conn.send(b"Invalid SSH identification string.\r\n")
        return
    conn.note_client_banner(line.decode("ascii", "replace"))
    conn.note_command(line.decode("ascii", "replace"))
    packet = ssh_binary_packet(ssh_kexinit_payload(fingerprint, secrets.token_bytes(16)), secrets.token_bytes(16))
    if not await conn.send(packet):
        return
    data = b""
    while True:
        chunk = await conn.read_some()
        if not chunk:
            return
        data += chunk
        try:
            payload, _ = parse_ssh_binary_packet(data)
        except WireError as exc:
            if str(exc) == "incomplete":
                continue
            return
        try:
            parse_kexinit(payload)
            conn.note_command("KEXINIT")
        except WireError:
            conn.note_command("malformed KEXINIT")
        return


# --- MySQL ------------------------------------------------------------------------------------


async def converse_mysql(conn: Connection, template: Template) -> None:
    """Send the HandshakeV10, read the login and deny it as the real server would."""
    fingerprint = _fingerprint(template, MysqlFingerprint)
    scramble = _mysql_scramble()
    connection_id = fingerprint.first_connection_id + conn.number
    if not await conn.send(mysql_handshake(fingerprint, connection_id, scramble)):
        return
    data = b""
    while True:
        chunk = await conn.read_some()
        if not chunk:
            return
        data += chunk
        try:
            sequence, payload, _ = parse_mysql_packet(data)
            break
        except WireError as exc:
            if str(exc) != "incomplete":
                await conn.send(mysql_error(1, ER_HANDSHAKE_ERROR, "08S01", "Bad handshake"))
                return
    try:
        login = parse_mysql_login(payload)
    except WireError:
        await conn.send(mysql_error(sequence + 1, ER_HANDSHAKE_ERROR, "08S01", "Bad handshake"))
        return
    if login.ssl_request:
        conn.note_command("SSLRequest")
        await conn.send(mysql_error(sequence + 1, ER_HANDSHAKE_ERROR, "08S01", "Bad handshake"))
        return
    conn.note_command(f"login {login.username}")
    attrs = login.attributes
    client = " ".join(
        v for v in (attrs.get("_client_name"), attrs.get("_client_version"), attrs.get("program_name")) if v
    )
    conn.note_client_banner(client)
    plugin = login.auth_plugin_name or fingerprint.auth_plugin_name
    # The response is a challenge hash, not the password: keep it in a form offline crackers take.
    tag = "$mysqlna$" if plugin == "mysql_native_password" else f"${plugin}$"
    secret = f"{tag}{scramble.hex()}*{login.auth_response.hex()}" if login.auth_response else ""
    conn.note_credential(login.username, secret)
    host = "localhost" if conn.source_address in ("127.0.0.1", "::1") else conn.source_address
    using = "YES" if login.auth_response else "NO"
    message = f"Access denied for user '{login.username[:64]}'@'{host}' (using password: {using})"
    await conn.send(mysql_error(sequence + 1, ER_ACCESS_DENIED_ERROR, "28000", message))


def _mysql_scramble() -> bytes:
    # Real servers draw printable bytes and never NUL or '$' (sql/auth/password.cc).
    alphabet = bytes(b for b in range(1, 128) if b != ord("$"))
    return bytes(secrets.choice(alphabet) for _ in range(20))


# --- Redis ------------------------------------------------------------------------------------


async def converse_redis(conn: Connection, template: Template) -> None:
    """Answer RESP (and inline) commands like a Redis server that may require a password."""
    fingerprint = _fingerprint(template, RedisFingerprint)
    parser = RespParser()
    while True:
        data = await conn.read_some()
        if not data:
            return
        try:
            commands = parser.feed(data)
        except WireError as exc:
            await conn.send(resp_error(f"ERR Protocol error: {exc}"))
            return
        for command in commands:
            name = command[0].decode("latin-1").upper()
            shown = name if name in ("AUTH", "HELLO") else " ".join(a.decode("latin-1")[:64] for a in command[:4])
            if not conn.note_command(shown):
                return
            # RESP frames every argument, so byte signatures need the command as one line.
            for indicator in exploit_indicators(b" ".join(command)):
                conn.note_indicator(indicator)
            reply, close = _redis_reply(conn, fingerprint, name, command[1:])
            if not await conn.send(reply) or close:
                return


def _redis_major(fingerprint: RedisFingerprint) -> int:
    return int(fingerprint.redis_version.split(".")[0])


def _redis_reply(conn: Connection, fp: RedisFingerprint, name: str, args: list[bytes]) -> tuple[bytes, bool]:
    major = _redis_major(fp)
    if name == "QUIT":
        return resp_simple("OK"), True
    if name == "AUTH":
        return _redis_auth(conn, fp, args), False
    if name == "HELLO" and major >= 6 and len(args) >= 4 and args[1].upper() == b"AUTH":
        return _redis_auth(conn, fp, args[2:4]), False
    if fp.requires_auth:
        return resp_error("NOAUTH Authentication required."), False
    simple: dict[str, bytes] = {
        "PING": resp_bulk(args[0]) if args else resp_simple("PONG"),
        "INFO": resp_bulk(redis_info(fp, time.time()).encode()),
        "DBSIZE": resp_integer(fp.keys),
        "SELECT": resp_simple("OK"),
        "SET": resp_simple("OK"),
        "GET": resp_bulk(None),
        "KEYS": b"*0\r\n",
        "CLIENT": resp_simple("OK"),
        "CONFIG": resp_simple("OK") if args and args[0].upper() == b"SET" else b"*0\r\n",
        "SAVE": resp_simple("OK"),
        "FLUSHALL": resp_simple("OK"),
        "SLAVEOF": resp_simple("OK"),
        "REPLICAOF": resp_simple("OK"),
        "ECHO": resp_bulk(args[0] if args else b""),
    }
    if name in simple:
        return simple[name], False
    if name == "HELLO" and major >= 6:
        return _redis_hello(fp, conn.number), False
    if name == "MODULE":
        return resp_error("ERR Error loading the extension. Please check the server logs."), False
    quote = "'" if major >= 7 else "`"
    shown = ", ".join(f"{quote}{a.decode('latin-1')[:128]}{quote}" for a in args[:3])
    return resp_error(f"ERR unknown command {quote}{name.lower()}{quote}, with args beginning with: {shown}"), False


def _redis_hello(fp: RedisFingerprint, client_id: int) -> bytes:
    fields = [b"server", b"redis", b"version", fp.redis_version.encode(), b"proto"]
    head = b"*14\r\n" + b"".join(resp_bulk(f) for f in fields) + resp_integer(2)
    tail = resp_bulk(b"id") + resp_integer(client_id + 3) + resp_bulk(b"mode") + resp_bulk(b"standalone")
    return head + tail + resp_bulk(b"role") + resp_bulk(b"master") + resp_bulk(b"modules") + b"*0\r\n"


def _redis_auth(conn: Connection, fp: RedisFingerprint, args: list[bytes]) -> bytes:
    if not args or len(args) > 2:
        return resp_error("ERR wrong number of arguments for 'auth' command")
    user = args[0].decode("utf-8", "replace") if len(args) == 2 else ""
    conn.note_credential(user, args[-1].decode("utf-8", "replace"))
    major = _redis_major(fp)
    if not fp.requires_auth and len(args) == 1:
        if major >= 6:
            return resp_error(
                "ERR AUTH <password> called without any password configured for the default user. "
                "Are you sure your configuration is correct?"
            )
        return resp_error("ERR Client sent AUTH, but no password is set")
    if major >= 6:
        suffix = " or user is disabled." if fp.redis_version >= "6.2" else ""
        return resp_error(f"WRONGPASS invalid username-password pair{suffix}")
    return resp_error("ERR invalid password")


def redis_info(fp: RedisFingerprint, now: float) -> str:
    """The INFO text of the imitated server at Unix time `now`."""
    uptime = max(0, int(now) - fp.started_at)
    connections = fp.keys // 7 + uptime // 40
    lines = [
        "# Server",
        f"redis_version:{fp.redis_version}",
        "redis_git_sha1:00000000",
        "redis_git_dirty:0",
        f"redis_build_id:{fp.build_id}",
        "redis_mode:standalone",
        f"os:{fp.os}",
        "arch_bits:64",
        "multiplexing_api:epoll",
        "atomicvar_api:atomic-builtin" if fp.redis_version < "7" else "atomicvar_api:c11-builtin",
        f"gcc_version:{fp.gcc_version}",
        f"process_id:{fp.process_id}",
        f"run_id:{fp.run_id}",
        f"tcp_port:{fp.tcp_port}",
        f"uptime_in_seconds:{uptime}",
        f"uptime_in_days:{uptime // 86400}",
        "hz:10",
        "configured_hz:10",
        f"lru_clock:{int(now) & 0xFFFFFF}",
        f"executable:{fp.executable}",
        f"config_file:{fp.config_file}",
        "",
        "# Clients",
        "connected_clients:1",
        "blocked_clients:0",
        "",
        "# Memory",
        f"used_memory:{900_000 + fp.keys * 96}",
        f"used_memory_human:{(900_000 + fp.keys * 96) / 1048576:.2f}M",
        "maxmemory:0",
        "maxmemory_policy:noeviction",
        "",
        "# Persistence",
        "loading:0",
        f"rdb_last_save_time:{int(now) - uptime % 3600}",
        "rdb_last_bgsave_status:ok",
        "aof_enabled:0",
        "",
        "# Stats",
        f"total_connections_received:{connections}",
        f"total_commands_processed:{connections * 23}",
        "",
        "# Replication",
        "role:master",
        "connected_slaves:0",
        "",
        "# Keyspace",
        f"db0:keys={fp.keys},expires={fp.keys // 11},avg_ttl=0",
        "",
    ]
    return "\r\n".join(lines)


# --- FTP --------------------------------------------------------------------------------------


async def converse_ftp(conn: Connection, template: Template) -> None:
    """Greet, then refuse every login with the daemon's own replies."""
    fp = _fingerprint(template, FtpFingerprint)
    if not await conn.send(_line(fp.greeting.format(local_address=_ftp_address(conn)))):
        return
    user: str | None = None
    failures = 0
    while True:
        raw = await conn.read_line(limit=512)
        if raw is None:
            return
        text = raw.decode("utf-8", "replace")
        verb, _, argument = text.strip().partition(" ")
        verb = verb.upper()
        if not conn.note_command("PASS ****" if verb == "PASS" else text[:128]):
            return
        reply, close = fp.login_required_reply, False
        if verb == "USER":
            user, reply = argument, fp.user_reply.format(user=argument[:64])
        elif verb == "PASS":
            if user is None:
                reply = fp.user_first_reply
            else:
                conn.note_credential(user, argument)
                user, failures = None, failures + 1
                reply, close = fp.login_failed_reply, failures >= fp.max_login_failures
        elif verb == "SYST":
            reply = fp.system_reply
        elif verb == "QUIT":
            reply, close = fp.goodbye_reply, True
        elif verb == "FEAT":
            reply = "211-Features:\r\n" + "".join(f" {f}\r\n" for f in fp.features) + "211 End"
        elif verb == "NOOP":
            reply = "200 NOOP ok."
        elif verb not in _FTP_VERBS:
            reply = fp.unknown_reply.format(command=verb[:32])
        if not await conn.send(_line(reply)) or close:
            return


_FTP_VERBS = frozenset(
    {
        "ABOR",
        "ACCT",
        "ALLO",
        "APPE",
        "AUTH",
        "CDUP",
        "CWD",
        "DELE",
        "EPRT",
        "EPSV",
        "HELP",
        "LIST",
        "MDTM",
        "MKD",
        "MLSD",
        "MLST",
        "MODE",
        "NLST",
        "OPTS",
        "PASV",
        "PBSZ",
        "PORT",
        "PROT",
        "PWD",
        "REIN",
        "REST",
        "RETR",
        "RMD",
        "RNFR",
        "RNTO",
        "SITE",
        "SIZE",
        "SMNT",
        "STAT",
        "STOR",
        "STOU",
        "STRU",
        "TYPE",
    }
)


def _ftp_address(conn: Connection) -> str:
    return conn.local_address if ":" in conn.local_address else f"::ffff:{conn.local_address}"


# --- SMTP -------------------------------------------------------------------------------------


async def converse_smtp(conn: Connection, template: Template) -> None:
    """Greet, answer EHLO with the capability list, deny AUTH and relaying like Postfix."""
    fp = _fingerprint(template, SmtpFingerprint)
    if not await conn.send(_line(fp.banner)):
        return
    state = {"helo": False, "mail": False}
    errors = 0
    while True:
        raw = await conn.read_line(limit=2048)
        if raw is None:
            return
        text = raw.decode("utf-8", "replace")
        verb, _, argument = text.strip().partition(" ")
        verb = verb.upper()
        if not conn.note_command("AUTH ****" if verb == "AUTH" else text[:128]):
            return
        reply, close = await _smtp_reply(conn, fp, verb, argument.strip(), state)
        if reply.startswith(("5", "4")):
            errors += 1
            if errors >= 20:
                reply, close = f"421 4.7.0 {fp.hostname} Error: too many errors", True
        if not await conn.send(_line(reply)) or close:
            return


async def _smtp_reply(
    conn: Connection, fp: SmtpFingerprint, verb: str, argument: str, state: dict[str, bool]
) -> tuple[str, bool]:
    if verb == "EHLO":
        conn.note_client_banner(argument)
        state["helo"] = True
        return "\r\n".join(
            [f"250-{fp.hostname}", *(f"250-{c}" for c in fp.ehlo_capabilities[:-1]), f"250 {fp.ehlo_capabilities[-1]}"]
        ), False
    if verb == "HELO":
        conn.note_client_banner(argument)
        state["helo"] = True
        return f"250 {fp.hostname}", False
    if verb == "QUIT":
        return "221 2.0.0 Bye", True
    if verb == "NOOP":
        return "250 2.0.0 Ok", False
    if verb == "RSET":
        state["mail"] = False
        return "250 2.0.0 Ok", False
    if verb == "STARTTLS":
        return "454 4.7.0 TLS not available due to local problem", False
    if verb == "VRFY":
        if "VRFY" in fp.ehlo_capabilities:
            return f"252 2.0.0 {argument[:64]}", False
        return "502 5.5.1 VRFY command is disabled", False
    if verb in ("AUTH", "MAIL") and not state["helo"]:
        return "503 5.5.1 Error: send HELO/EHLO first", False
    if verb == "AUTH":
        return await _smtp_auth(conn, argument), False
    if verb == "MAIL":
        state["mail"] = True
        return "250 2.1.0 Ok", False
    if verb == "RCPT":
        if not state["mail"]:
            return "503 5.5.1 Error: need MAIL command", False
        recipient = argument.partition(":")[2].strip()[:128]
        return f"554 5.7.1 {recipient}: Relay access denied", False
    if verb == "DATA":
        return (
            "554 5.5.1 Error: no valid recipients" if state["mail"] else "503 5.5.1 Error: need RCPT command"
        ), False
    return "502 5.5.2 Error: command not recognized", False


async def _smtp_auth(conn: Connection, argument: str) -> str:
    mechanism, _, initial = argument.partition(" ")
    mechanism = mechanism.upper()
    failure = "535 5.7.8 Error: authentication failed: authentication failure"
    if mechanism == "PLAIN":
        response = initial or await _smtp_challenge(conn, "")
        if response is None:
            return "501 5.7.0 Authentication aborted"
        decoded = _b64(response)
        if decoded is None:
            return "501 5.5.2 Cannot decode response"
        parts = decoded.split("\x00")
        if len(parts) == 3:
            conn.note_credential(parts[1], parts[2])
        return failure
    if mechanism == "LOGIN":
        user_b64 = initial or await _smtp_challenge(conn, "VXNlcm5hbWU6")
        user = _b64(user_b64) if user_b64 is not None else None
        if user is None:
            return "501 5.7.0 Authentication aborted"
        password_b64 = await _smtp_challenge(conn, "UGFzc3dvcmQ6")
        password = _b64(password_b64) if password_b64 is not None else None
        if password is None:
            return "501 5.7.0 Authentication aborted"
        conn.note_credential(user, password)
        return failure
    return "535 5.7.8 Error: authentication failed: Invalid authentication mechanism"


async def _smtp_challenge(conn: Connection, challenge: str) -> str | None:
    """Send a 334 challenge; the client's answer, or None if it cancelled ("*") or left."""
    if not await conn.send(_line(f"334 {challenge}")):
        return None
    raw = await conn.read_line(limit=2048)
    if raw is None or raw.strip() == b"*":
        return None
    return raw.decode("ascii", "replace").strip()


def _b64(value: str) -> str | None:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


# --- Shared -----------------------------------------------------------------------------------


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


def _fingerprint(template: Template, kind: type[F]) -> F:
    if not isinstance(template.fingerprint, kind):
        raise TypeError(f"template {template.template_id} is not a {kind.__name__} template")
    return template.fingerprint


CONVERSATIONS: dict[Protocol, Dialogue] = {
    Protocol.HTTP: converse_http,
    Protocol.SSH: converse_ssh,
    Protocol.MYSQL: converse_mysql,
    Protocol.REDIS: converse_redis,
    Protocol.FTP: converse_ftp,
    Protocol.SMTP: converse_smtp,
}
"""The dialogue of each protocol."""
