"""Redis decoy: RESP2 (and inline) commands answered like a server that may require a password,
with an INFO consistent with the installation's OS and version."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from servers.deception.fingerprints import RedisFingerprint
from servers.deception.protocols.framing import WireError
from servers.deception.recon import exploit_indicators
from servers.deception.templates import Template

if TYPE_CHECKING:
    from servers.deception.decoys import Connection


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


async def converse_redis(conn: Connection, template: Template) -> None:
    """Answer RESP (and inline) commands like a Redis server that may require a password."""
    fingerprint = template.fingerprint_as(RedisFingerprint)
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
    if name == "INFO":
        if major < 7 and len(args) > 1:
            return resp_error("ERR syntax error"), False
        return resp_bulk(redis_info(fp, time.time(), port=conn.local_port, sections=args).encode()), False
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


def redis_info(
    fp: RedisFingerprint, now: float, *, port: int | None = None, sections: list[bytes] | None = None
) -> str:
    """The INFO text of the imitated server at Unix time `now`, listening on `port`.

    Like Redis, `sections` (case-insensitive) selects what is shown: none, `default`, `all` or
    `everything` give every section; a named section only that one; an unknown name nothing.
    """
    chosen = _info_sections(fp, now, fp.tcp_port if port is None else port)
    wanted = {s.decode("latin-1").lower() for s in sections or []}
    if wanted and not wanted & {"default", "all", "everything"}:
        chosen = {name: lines for name, lines in chosen.items() if name.lower() in wanted}
    return "\r\n".join("\r\n".join([f"# {name}", *lines, ""]) for name, lines in chosen.items())


def _info_sections(fp: RedisFingerprint, now: float, port: int) -> dict[str, list[str]]:
    uptime = max(0, int(now) - fp.started_at)
    connections = fp.keys // 7 + uptime // 40
    return {
        "Server": [
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
            f"tcp_port:{port}",
            f"uptime_in_seconds:{uptime}",
            f"uptime_in_days:{uptime // 86400}",
            "hz:10",
            "configured_hz:10",
            f"lru_clock:{int(now) & 0xFFFFFF}",
            f"executable:{fp.executable}",
            f"config_file:{fp.config_file}",
        ],
        "Clients": ["connected_clients:1", "blocked_clients:0"],
        "Memory": [
            f"used_memory:{900_000 + fp.keys * 96}",
            f"used_memory_human:{(900_000 + fp.keys * 96) / 1048576:.2f}M",
            "maxmemory:0",
            "maxmemory_policy:noeviction",
        ],
        "Persistence": [
            "loading:0",
            f"rdb_last_save_time:{int(now) - uptime % 3600}",
            "rdb_last_bgsave_status:ok",
            "aof_enabled:0",
        ],
        "Stats": [f"total_connections_received:{connections}", f"total_commands_processed:{connections * 23}"],
        "Replication": ["role:master", "connected_slaves:0"],
        "Keyspace": [f"db0:keys={fp.keys},expires={fp.keys // 11},avg_ttl=0"],
    }
