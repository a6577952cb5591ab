"""MySQL decoy: the HandshakeV10 a real server sends, the HandshakeResponse41 parser, and the
Access denied ERR packet, byte for byte as libmysqlclient and libmariadb expect them."""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from servers.deception.fingerprints import (
    CLIENT_CONNECT_ATTRS,
    CLIENT_CONNECT_WITH_DB,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    MysqlFingerprint,
)
from servers.deception.protocols.framing import Cursor, Incomplete, WireError
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection


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
    """(sequence id, payload, bytes consumed) of the first packet; `Incomplete` if short."""
    if len(data) < 4:
        raise Incomplete("incomplete")
    length = int.from_bytes(data[:3], "little")
    if length > MYSQL_MAX_PACKET:
        raise WireError(f"packet of {length} bytes is larger than a login")
    if len(data) < 4 + length:
        raise Incomplete("incomplete")
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
    cursor = Cursor(payload)
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
    cursor = Cursor(payload)
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
        attrs = Cursor(cursor.take(cursor.lenenc_int()))
        while attrs.remaining and len(attributes) < 64:
            key = attrs.take(attrs.lenenc_int()).decode("utf-8", "replace")
            attributes[key] = attrs.take(attrs.lenenc_int()).decode("utf-8", "replace")
    return MysqlLogin(capabilities, username, auth, database, plugin, attributes, ssl_request=False)


def mysql_error(sequence: int, code: int, sql_state: str, message: str) -> bytes:
    """An ERR packet (protocol 4.1 form, with SQL state)."""
    payload = b"\xff" + code.to_bytes(2, "little") + b"#" + sql_state.encode("ascii") + message.encode()
    return mysql_packet(sequence, payload)


async def converse_mysql(conn: Connection, template: Template) -> None:
    """Send the HandshakeV10, read the login and deny it as the real server would."""
    fingerprint = template.fingerprint_as(MysqlFingerprint)
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
        except Incomplete:
            continue
        except WireError:
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
