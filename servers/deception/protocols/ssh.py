"""SSH decoy: identification lines and KEXINIT in the binary packet protocol (RFC 4253).

The decoy holds no host key, so it hangs up when the client starts the key exchange proper;
that is enough for every banner grabber and algorithm scanner (ssh-audit, nmap) to fingerprint it.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from servers.deception.fingerprints import SshFingerprint
from servers.deception.protocols.framing import Cursor, Incomplete, WireError
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection


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
    and `Incomplete` if more bytes are needed."""
    if len(data) < 5:
        raise Incomplete("incomplete")
    packet_length, padding_length = struct.unpack(">IB", data[:5])
    if packet_length > SSH_MAX_PACKET or packet_length < padding_length + 1 or padding_length < 4:
        raise WireError(f"bad packet length {packet_length} / padding {padding_length}")
    if len(data) < 4 + packet_length:
        raise Incomplete("incomplete")
    payload = data[5 : 4 + packet_length - padding_length]
    return payload, 4 + packet_length


def parse_kexinit(payload: bytes) -> KexInit:
    """Parse an SSH_MSG_KEXINIT payload."""
    cursor = Cursor(payload)
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


async def converse_ssh(conn: Connection, template: Template) -> None:
    """Exchange identification lines, then KEXINIT packets; hang up when the client starts the
    key exchange proper (the decoy holds no host key to answer with)."""
    fingerprint = template.fingerprint_as(SshFingerprint)
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
        except Incomplete:
            continue
        except WireError:
            return
        try:
            parse_kexinit(payload)
            conn.note_command("KEXINIT")
        except WireError:
            conn.note_command("malformed KEXINIT")
        return
