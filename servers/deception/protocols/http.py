"""HTTP/1.1 decoy: responses in the imitated product's own shape (header order, error pages), a
login page that records the credentials posted to it, and keep-alive within bounds."""

from __future__ import annotations

import base64
import binascii
import email.utils
import html
import json
import secrets
import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from servers.deception.fingerprints import HttpFingerprint
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection


HTTP_MAX_HEAD = 16 * 1024
"""Longest request head read."""
HTTP_MAX_BODY = 32 * 1024
"""Longest request body read."""

HTTP_REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
}


def http_date(fingerprint: HttpFingerprint, now: datetime) -> str:
    """The Date header value; IMF-fixdate in English whatever the process locale."""
    if fingerprint.date_format == "%a, %d %b %Y %H:%M:%S GMT":
        return email.utils.format_datetime(now.astimezone(UTC), usegmt=True)
    return now.astimezone(UTC).strftime(fingerprint.date_format)


def http_error_body(fingerprint: HttpFingerprint, status: int, host: str, port: int) -> bytes:
    """The built-in error page the product serves for `status`."""
    reason = HTTP_REASONS.get(status, "Error")
    if fingerprint.product == "nginx":
        lines = (
            "<html>",
            f"<head><title>{status} {reason}</title></head>",
            "<body>",
            f"<center><h1>{status} {reason}</h1></center>",
            f"<hr><center>{fingerprint.server_header}</center>",
            "</body>",
            "</html>",
            "",
        )
        return "\r\n".join(lines).encode()
    explanation = {
        404: "<p>The requested URL was not found on this server.</p>",
        400: "<p>Your browser sent a request that this server could not understand.<br />\n</p>",
        405: "<p>The requested method is not allowed for this URL.</p>",
    }.get(status, "")
    apache_title = {405: "Method Not Allowed"}.get(status, reason)
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
        f"<title>{status} {apache_title}</title>\n</head><body>\n<h1>{apache_title}</h1>\n{explanation}\n<hr>\n"
        f"<address>{fingerprint.server_header} Server at {host} Port {port}</address>\n</body></html>\n"
    ).encode()


def http_response(
    fingerprint: HttpFingerprint,
    status: int,
    body: bytes,
    *,
    now: datetime,
    content_type: str,
    keep_alive: bool,
    extra: dict[str, str] | None = None,
    head_only: bool = False,
) -> bytes:
    """A complete response with headers in the product's order."""
    apache = fingerprint.product == "Apache"
    values: dict[str, str] = {
        "Server": fingerprint.server_header,
        "Date": http_date(fingerprint, now),
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": ("Keep-Alive" if apache else "keep-alive") if keep_alive else "close",
    }
    if apache and keep_alive:
        values["Keep-Alive"] = "timeout=5, max=100"
    if status == 200:
        values.update(dict(fingerprint.extra_headers))
    values.update(extra or {})
    reason = HTTP_REASONS.get(status, "Error")
    if apache and status == 405:
        reason = "Method Not Allowed"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {values[name]}" for name in fingerprint.header_order if name in values]
    lines += [f"{name}: {value}" for name, value in values.items() if name not in fingerprint.header_order]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def http_index_sample(fingerprint: HttpFingerprint, now: datetime) -> tuple[list[tuple[str, str]], bytes]:
    """The headers (in the product's order) and the body the decoy answers `GET /` with, for display."""
    body = _login_page(fingerprint, error="")
    head = http_response(
        fingerprint,
        200,
        body,
        now=now,
        content_type="text/html; charset=utf-8",
        keep_alive=True,
        extra=_session_cookie(fingerprint),
        head_only=True,
    )
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines if line)]
    return headers, body


async def converse_http(conn: Connection, template: Template) -> None:
    """Serve HTTP/1.1 requests (keep-alive) with a login page, login failures and error pages."""
    fingerprint = template.fingerprint_as(HttpFingerprint)
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
