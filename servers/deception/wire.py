"""The bytes a template puts on the wire, and bounded parsers for what clients send back.

SSH binary packets and KEXINIT (RFC 4253), the MySQL HandshakeV10, HandshakeResponse41 and
ERR packets, RESP for Redis and HTTP/1.1 responses in each server product's own shape. Parsers
take untrusted bytes and raise `WireError` on anything malformed; they never index past the
end of their input.
"""

from __future__ import annotations

import email.utils
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from servers.deception.templates import (
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    HttpFingerprint,
    MysqlFingerprint,
    SshFingerprint,
)


class WireError(ValueError):
    """Bytes from a client that do not parse as the protocol says."""


class _Cursor:
    """Reads fields from untrusted bytes, raising WireError at the end instead of slicing short."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise WireError(f"truncated: wanted {count} bytes at offset {self.offset}")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16le(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32le(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u32be(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def until_nul(self) -> bytes:
        end = self.data.find(b"\x00", self.offset)
        if end < 0:
            raise WireError("unterminated string")
        chunk = self.data[self.offset : end]
        self.offset = end + 1
        return chunk

    def lenenc_int(self) -> int:
        first = self.u8()
        if first < 0xFB:
            return first
        widths = {0xFC: 2, 0xFD: 3, 0xFE: 8}
        if first not in widths:
            raise WireError(f"bad length-encoded integer prefix {first:#x}")
        return int.from_bytes(self.take(widths[first]), "little")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset


# --- SSH (RFC 4253) ---------------------------------------------------------------------------

SSH_MSG_KEXINIT = 20
SSH_MAX_PACKET = 35000
"""Largest packet RFC 4253 section 6.1 obliges an implementation to accept."""


@dataclass(frozen=True)
class KexInit:
    """The name-lists of an SSH_MSG_KEXINIT."""

    cookie: bytes
    kex_algorithms: tuple[str, ...]
    host_key_algorithms: tuple[str, ...]
    ciphers_client_to_server: tuple[str, ...]
    ciphers_server_to_client: tuple[str, ...]
    macs_client_to_server: tuple[str, ...]
    macs_server_to_client: tuple[str, ...]
    compression_client_to_server: tuple[str, ...]
    compression_server_to_client: tuple[str, ...]
    first_kex_packet_follows: bool


def _name_list(names: tuple[str, ...]) -> bytes:
    joined = ",".join(names).encode("ascii")
    return struct.pack(">I", len(joined)) + joined


def ssh_kexinit_payload(fingerprint: SshFingerprint, cookie: bytes) -> bytes:
    """The SSH_MSG_KEXINIT payload a server with this fingerprint sends."""
    if len(cookie) != 16:
        raise ValueError("the KEXINIT cookie is 16 bytes")
    lists = (
        fingerprint.kex_algorithms,
        fingerprint.host_key_algorithms,
        fingerprint.ciphers,
        fingerprint.ciphers,
        fingerprint.macs,
        fingerprint.macs,
        fingerprint.compression,
        fingerprint.compression,
        (),
        (),
    )
    body = b"".join(_name_list(names) for names in lists)
    return bytes([SSH_MSG_KEXINIT]) + cookie + body + b"\x00" + struct.pack(">I", 0)


def ssh_binary_packet(payload: bytes, padding: bytes) -> bytes:
    """Frame `payload` unencrypted (before NEWKEYS: block size 8, no MAC).

    `padding` supplies the random padding bytes; as many as needed are used (4 to 11).
    """
    padding_length = 8 - (5 + len(payload)) % 8
    if padding_length < 4:
        padding_length += 8
    if len(padding) < padding_length:
        raise ValueError(f"need {padding_length} padding bytes")
    packet_length = 1 + len(payload) + padding_length
    return struct.pack(">IB", packet_length, padding_length) + payload + padding[:padding_length]


def parse_ssh_binary_packet(data: bytes) -> tuple[bytes, int]:
    """(payload, bytes consumed) of the first unencrypted packet in `data`; WireError if malformed
    and `WireError("incomplete")` if more bytes are needed."""
    if len(data) < 5:
        raise WireError("incomplete")
    packet_length, padding_length = struct.unpack(">IB", data[:5])
    if packet_length > SSH_MAX_PACKET or packet_length < padding_length + 1 or padding_length < 4:
        raise WireError(f"bad packet length {packet_length} / padding {padding_length}")
    if len(data) < 4 + packet_length:
        raise WireError("incomplete")
    payload = data[5 : 4 + packet_length - padding_length]
    return payload, 4 + packet_length


def parse_kexinit(payload: bytes) -> KexInit:
    """Parse an SSH_MSG_KEXINIT payload."""
    cursor = _Cursor(payload)
    if cursor.u8() != SSH_MSG_KEXINIT:
        raise WireError("not a KEXINIT")
    cookie = cursor.take(16)
    lists: list[tuple[str, ...]] = []
    for _ in range(10):
        raw = cursor.take(cursor.u32be())
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise WireError("name-list is not ASCII") from exc
        lists.append(tuple(text.split(",")) if text else ())
    follows = cursor.u8() != 0
    cursor.u32be()
    return KexInit(
        cookie=cookie,
        kex_algorithms=lists[0],
        host_key_algorithms=lists[1],
        ciphers_client_to_server=lists[2],
        ciphers_server_to_client=lists[3],
        macs_client_to_server=lists[4],
        macs_server_to_client=lists[5],
        compression_client_to_server=lists[6],
        compression_server_to_client=lists[7],
        first_kex_packet_follows=follows,
    )


# --- MySQL ------------------------------------------------------------------------------------

MYSQL_MAX_PACKET = 1 << 16
"""Largest login packet the decoy reads; real logins are a few hundred bytes."""
ER_ACCESS_DENIED_ERROR = 1045
ER_HANDSHAKE_ERROR = 1043


def mysql_packet(sequence: int, payload: bytes) -> bytes:
    """Frame a payload: 3-byte little-endian length, 1-byte sequence id."""
    if len(payload) >= 0xFFFFFF:
        raise ValueError("payload too long for one packet")
    return len(payload).to_bytes(3, "little") + bytes([sequence & 0xFF]) + payload


def parse_mysql_packet(data: bytes) -> tuple[int, bytes, int]:
    """(sequence id, payload, bytes consumed) of the first packet; `WireError("incomplete")` if short."""
    if len(data) < 4:
        raise WireError("incomplete")
    length = int.from_bytes(data[:3], "little")
    if length > MYSQL_MAX_PACKET:
        raise WireError(f"packet of {length} bytes is larger than a login")
    if len(data) < 4 + length:
        raise WireError("incomplete")
    return data[3], data[4 : 4 + length], 4 + length


def mysql_handshake(fingerprint: MysqlFingerprint, connection_id: int, scramble: bytes) -> bytes:
    """The HandshakeV10 packet (sequence 0) a server with this fingerprint sends."""
    if len(scramble) != 20 or b"\x00" in scramble:
        raise ValueError("the scramble is 20 non-NUL bytes")
    capabilities = fingerprint.capability_flags
    reserved = b"\x00" * 10
    if fingerprint.mariadb:
        reserved = b"\x00" * 6 + fingerprint.mariadb_capabilities.to_bytes(4, "little")
    payload = b"".join(
        (
            bytes([fingerprint.protocol_version]),
            fingerprint.server_version.encode("ascii") + b"\x00",
            (connection_id & 0xFFFFFFFF).to_bytes(4, "little"),
            scramble[:8],
            b"\x00",
            (capabilities & 0xFFFF).to_bytes(2, "little"),
            bytes([fingerprint.character_set]),
            fingerprint.status_flags.to_bytes(2, "little"),
            (capabilities >> 16 & 0xFFFF).to_bytes(2, "little"),
            bytes([len(scramble) + 1]),
            reserved,
            scramble[8:] + b"\x00",
            fingerprint.auth_plugin_name.encode("ascii") + b"\x00",
        )
    )
    return mysql_packet(0, payload)


@dataclass(frozen=True)
class MysqlHandshake:
    """A parsed HandshakeV10, as a client sees it."""

    protocol_version: int
    server_version: str
    connection_id: int
    scramble: bytes
    capability_flags: int
    character_set: int
    status_flags: int
    auth_plugin_name: str


def parse_mysql_handshake(payload: bytes) -> MysqlHandshake:
    """Parse a HandshakeV10 payload the way libmysqlclient does."""
    cursor = _Cursor(payload)
    protocol_version = cursor.u8()
    if protocol_version != 10:
        raise WireError(f"protocol version {protocol_version}")
    version = cursor.until_nul().decode("ascii", "replace")
    connection_id = cursor.u32le()
    part1 = cursor.take(8)
    cursor.take(1)
    capabilities = cursor.u16le()
    charset = cursor.u8()
    status = cursor.u16le()
    capabilities |= cursor.u16le() << 16
    data_length = cursor.u8()
    cursor.take(10)
    part2 = b""
    if capabilities & CLIENT_SECURE_CONNECTION:
        part2 = cursor.take(max(13, data_length - 8))[:-1]
    plugin = cursor.until_nul().decode("ascii", "replace") if capabilities & CLIENT_PLUGIN_AUTH else ""
    return MysqlHandshake(
        protocol_version, version, connection_id, part1 + part2, capabilities, charset, status, plugin
    )


@dataclass(frozen=True)
class MysqlLogin:
    """What a client sent in its HandshakeResponse41 (or an SSLRequest)."""

    capability_flags: int
    username: str
    auth_response: bytes
    database: str
    auth_plugin_name: str
    attributes: dict[str, str]
    ssl_request: bool


def mysql_login_packet(
    username: str,
    auth_response: bytes,
    *,
    database: str = "",
    plugin: str = "mysql_native_password",
    attributes: dict[str, str] | None = None,
) -> bytes:
    """A HandshakeResponse41 (sequence 1), as a client sends it; used by tests and replays."""
    capabilities = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
    capabilities |= CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | (CLIENT_CONNECT_WITH_DB if database else 0)
    attrs = b""
    if attributes:
        capabilities |= CLIENT_CONNECT_ATTRS
        pairs = b"".join(_lenenc_str(k.encode()) + _lenenc_str(v.encode()) for k, v in attributes.items())
        attrs = _lenenc_str(pairs)
    payload = b"".join(
        (
            struct.pack("<IIB", capabilities, 1 << 24, 255),
            b"\x00" * 23,
            username.encode() + b"\x00",
            _lenenc_str(auth_response),
            database.encode() + b"\x00" if database else b"",
            plugin.encode() + b"\x00",
            attrs,
        )
    )
    return mysql_packet(1, payload)


def _lenenc_str(value: bytes) -> bytes:
    if len(value) < 0xFB:
        return bytes([len(value)]) + value
    return b"\xfc" + len(value).to_bytes(2, "little") + value


def parse_mysql_login(payload: bytes) -> MysqlLogin:
    """Parse a HandshakeResponse41 payload (or recognise an SSLRequest)."""
    cursor = _Cursor(payload)
    capabilities = cursor.u32le()
    if not capabilities & CLIENT_PROTOCOL_41:
        raise WireError("pre-4.1 login packets are not spoken")
    cursor.take(4 + 1 + 23)
    if cursor.remaining == 0 and capabilities & CLIENT_SSL:
        return MysqlLogin(capabilities, "", b"", "", "", {}, ssl_request=True)
    username = cursor.until_nul().decode("utf-8", "replace")
    if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = cursor.take(cursor.lenenc_int())
    elif capabilities & CLIENT_SECURE_CONNECTION:
        auth = cursor.take(cursor.u8())
    else:
        auth = cursor.until_nul()
    database = cursor.until_nul().decode("utf-8", "replace") if capabilities & CLIENT_CONNECT_WITH_DB else ""
    plugin = ""
    if capabilities & CLIENT_PLUGIN_AUTH and cursor.remaining:
        plugin = cursor.until_nul().decode("ascii", "replace")
    attributes: dict[str, str] = {}
    if capabilities & CLIENT_CONNECT_ATTRS and cursor.remaining:
        attrs = _Cursor(cursor.take(cursor.lenenc_int()))
        while attrs.remaining and len(attributes) < 64:
            key = attrs.take(attrs.lenenc_int()).decode("utf-8", "replace")
            attributes[key] = attrs.take(attrs.lenenc_int()).decode("utf-8", "replace")
    return MysqlLogin(capabilities, username, auth, database, plugin, attributes, ssl_request=False)


def mysql_error(sequence: int, code: int, sql_state: str, message: str) -> bytes:
    """An ERR packet (protocol 4.1 form, with SQL state)."""
    payload = b"\xff" + code.to_bytes(2, "little") + b"#" + sql_state.encode("ascii") + message.encode()
    return mysql_packet(sequence, payload)


# --- Redis (RESP2) ----------------------------------------------------------------------------

RESP_MAX_ARGS = 1024
RESP_MAX_BULK = 512 * 1024
RESP_MAX_INLINE = 64 * 1024


def resp_simple(text: str) -> bytes:
    """`+text`."""
    return b"+" + text.encode() + b"\r\n"


def resp_error(text: str) -> bytes:
    """`-text`."""
    return b"-" + text.encode() + b"\r\n"


def resp_bulk(data: bytes | None) -> bytes:
    """A bulk string, or the null bulk string for None."""
    if data is None:
        return b"$-1\r\n"
    return b"$" + str(len(data)).encode() + b"\r\n" + data + b"\r\n"


def resp_integer(value: int) -> bytes:
    """`:value`."""
    return b":" + str(value).encode() + b"\r\n"


class RespParser:
    """Incremental parser of client commands: RESP arrays of bulk strings, or inline commands."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Append received bytes; return the commands now complete. WireError on a protocol error
        (Redis answers `-ERR Protocol error` and closes)."""
        self._buffer += data
        commands: list[list[bytes]] = []
        while self._buffer:
            parsed = self._parse_one()
            if parsed is None:
                break
            command, consumed = parsed
            self._buffer = self._buffer[consumed:]
            if command:
                commands.append(command)
        return commands

    def _parse_one(self) -> tuple[list[bytes], int] | None:
        buffer = self._buffer
        if not buffer.startswith(b"*"):
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > RESP_MAX_INLINE:
                    raise WireError("too big inline request")
                return None
            return buffer[:end].strip(b"\r").split(), end + 1
        header_end = buffer.find(b"\r\n")
        if header_end < 0:
            return None
        count = _resp_length(buffer[1:header_end], RESP_MAX_ARGS, "multibulk length")
        offset = header_end + 2
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            line_end = buffer.find(b"\r\n", offset)
            if line_end < 0:
                return None
            if buffer[offset : offset + 1] != b"$":
                raise WireError(f"expected '$', got '{buffer[offset : offset + 1].decode('latin-1')}'")
            length = _resp_length(buffer[offset + 1 : line_end], RESP_MAX_BULK, "bulk length")
            start = line_end + 2
            if len(buffer) < start + length + 2:
                return None
            args.append(buffer[start : start + length])
            offset = start + length + 2
        return args, offset


def _resp_length(raw: bytes, limit: int, what: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise WireError(f"invalid {what}") from None
    if value > limit or value < -1:
        raise WireError(f"invalid {what}")
    return value


# --- HTTP/1.1 ---------------------------------------------------------------------------------

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
