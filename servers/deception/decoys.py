"""Live decoy listeners: asyncio TCP servers that speak a template's protocol and record every connection.

Each accepted connection runs its protocol's dialogue (`protocols/`) under a read
timeout, a whole-connection deadline and a cap on bytes read, and ends as one `Interaction`
handed to the sink: whatever the client sent, garbage included, a decoy never raises out of
its handler and never stops listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

from servers.deception.domain import Credential, Interaction, Protocol, parse_source_address
from servers.deception.protocols import DIALOGUES
from servers.deception.recon import classify_stage, exploit_indicators
from servers.deception.templates import Template, TemplateCatalog
from servers.mesh.errors import AlreadyExists, InvalidArgument, NotFound

log = logging.getLogger(__name__)

InteractionSink = Callable[[Interaction], None]
"""Receives each interaction when its connection ends, e.g. `queue.put_nowait`."""
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class DecoyConfig:
    """One decoy listener to run."""

    decoy_id: str
    """Stable id, e.g. `ssh-1`; appears in interactions, alerts and the bandit's arms."""
    protocol: Protocol
    """Which template it presents."""
    port: int = 0
    """TCP port; 0 binds a free port, reported by `DecoyListener.port`."""
    bind_address: str = "127.0.0.1"
    """Address to listen on; loopback unless the operator exposes decoys on purpose."""

    def __post_init__(self) -> None:
        if not self.decoy_id.strip() or len(self.decoy_id) > 64 or not self.decoy_id.isascii():
            raise InvalidArgument("decoy_id", "must be 1 to 64 ASCII characters")
        if not 0 <= self.port <= 65535:
            raise InvalidArgument("port", "must be between 0 and 65535")
        try:
            ipaddress.ip_address(self.bind_address)
        except ValueError:
            raise InvalidArgument("bind_address", f"{self.bind_address!r} is not an IP address") from None


def default_decoy_configs(bind_address: str = "127.0.0.1") -> tuple[DecoyConfig, ...]:
    """One decoy per protocol on free loopback ports (`http-1`, `ssh-1`, ...)."""
    return tuple(DecoyConfig(f"{p.label}-1", p, 0, bind_address) for p in Protocol)


@dataclass(frozen=True)
class DecoyLimits:
    """Bounds that keep a hostile client from holding a decoy's resources."""

    read_timeout: float = 10.0
    """Seconds to wait for the client's next bytes before hanging up."""
    connection_timeout: float = 60.0
    """Seconds a whole connection may last."""
    max_bytes: int = 64 * 1024
    """Bytes read from one connection at most; the rest is counted but not read."""
    sample_bytes: int = 2048
    """Bytes of the received data kept in the interaction's sample."""
    max_connections: int = 256
    """Connections served at once per decoy; more are closed at once (and recorded as scans)."""
    max_commands: int = 64
    """Commands or requests answered per connection before hanging up."""
    max_credentials: int = 32
    """Credentials recorded per connection."""

    def __post_init__(self) -> None:
        if not self.read_timeout > 0 or not self.connection_timeout > 0:
            raise InvalidArgument("read_timeout", "timeouts must be positive")
        if self.max_bytes < 1 or self.sample_bytes < 0 or self.max_connections < 1:
            raise InvalidArgument("max_bytes", "byte and connection limits must be positive")


class Connection:
    """One client connection as a dialogue sees it: bounded reads that record, writes that never raise."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: DecoyLimits,
        *,
        source: tuple[str, int],
        local: tuple[str, int],
        number: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.limits = limits
        self.source_address, self.source_port = source
        self.local_address, self.local_port = local
        self.number = number
        """Sequence number of this connection on its listener, from 0."""
        self.received = bytearray()
        self.bytes_received = 0
        self.credentials: list[Credential] = []
        self.client_banner = ""
        self.commands: list[str] = []
        self.extra_indicators: list[str] = []
        self._pending = b""
        self.peer_closed = False

    async def read_some(self) -> bytes:
        """The next bytes from the client; empty at end of stream, timeout or the byte cap."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return await self._receive()

    async def read_line(self, limit: int = 4096) -> bytes | None:
        """The next line without its CR LF; None at end of stream, timeout, or a line over `limit`."""
        return await self.read_until(b"\n", limit, strip=True)

    async def read_until(self, marker: bytes, limit: int, *, strip: bool = False) -> bytes | None:
        """Bytes up to and including `marker` (stripped of trailing CR LF if `strip`); None if it
        does not arrive within `limit` bytes or before the stream ends."""
        while marker not in self._pending:
            if len(self._pending) > limit:
                return None
            data = await self._receive()
            if not data:
                return None
            self._pending += data
        end = self._pending.index(marker) + len(marker)
        if end > limit + len(marker):
            return None
        chunk, self._pending = self._pending[:end], self._pending[end:]
        return chunk.rstrip(b"\r\n") if strip else chunk

    async def read_exactly(self, count: int) -> bytes | None:
        """Exactly `count` bytes, or None if the stream ends first."""
        while len(self._pending) < count:
            data = await self._receive()
            if not data:
                return None
            self._pending += data
        chunk, self._pending = self._pending[:count], self._pending[count:]
        return chunk

    async def _receive(self) -> bytes:
        budget = self.limits.max_bytes - self.bytes_received
        if budget <= 0 or self.peer_closed:
            return b""
        try:
            data = await asyncio.wait_for(self._reader.read(min(4096, budget)), self.limits.read_timeout)
        except (TimeoutError, ConnectionError, OSError):
            return b""
        if not data:
            self.peer_closed = True
            return b""
        self.bytes_received += len(data)
        self.received += data
        return data

    async def send(self, data: bytes) -> bool:
        """Write `data`; False if the client is gone (the dialogue should stop)."""
        if self._writer.is_closing():
            return False
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), self.limits.read_timeout)
        except (TimeoutError, ConnectionError, OSError):
            return False
        return True

    def note_credential(self, username: str, secret: str) -> None:
        """Record a credential the client tried (bounded in number and length)."""
        if len(self.credentials) < self.limits.max_credentials:
            self.credentials.append(Credential(username[:256], secret[:512]))

    def note_client_banner(self, banner: str) -> None:
        """Record what the client says it is (the first such statement wins)."""
        if not self.client_banner and banner.strip():
            self.client_banner = banner.strip()[:256]

    def note_command(self, command: str) -> bool:
        """Record one command or request line; False once the per-connection budget is spent."""
        if len(self.commands) >= self.limits.max_commands:
            return False
        self.commands.append(command[:256])
        return True

    def note_indicator(self, indicator: str) -> None:
        """Record an exploit indicator a dialogue recognised that byte signatures cannot see."""
        if indicator not in self.extra_indicators:
            self.extra_indicators.append(indicator)


class DecoyListener:
    """One live decoy: a TCP listener speaking one template."""

    def __init__(
        self,
        config: DecoyConfig,
        template: Template,
        sink: InteractionSink,
        *,
        limits: DecoyLimits | None = None,
        clock: Clock | None = None,
    ) -> None:
        if template.protocol != config.protocol:
            raise InvalidArgument("protocol", f"template {template.template_id} speaks {template.protocol.label}")
        self.config = config
        self.template = template
        self.limits = limits or DecoyLimits()
        self._sink = sink
        self._clock = clock or (lambda: datetime.now(UTC))
        self._server: asyncio.Server | None = None
        self._port = 0
        self._active: set[asyncio.Task[None]] = set()
        self._connections = 0
        self.interaction_count = 0

    @property
    def decoy_id(self) -> str:
        """The decoy's id."""
        return self.config.decoy_id

    @property
    def port(self) -> int:
        """The bound port (the real one when configured as 0); 0 before start."""
        return self._port

    @property
    def listening(self) -> bool:
        """True while accepting connections."""
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        """Bind and start accepting; OSError if the port is taken."""
        if self._server is not None:
            return
        # A scan arrives as a burst of connects: a deep accept queue keeps the kernel from dropping them.
        self._server = await asyncio.start_server(
            self._accept,
            self.config.bind_address,
            self.config.port,
            limit=self.limits.max_bytes,
            backlog=max(128, self.limits.max_connections * 4),
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info(
            "decoy %s (%s) listening on %s:%d",
            self.decoy_id,
            self.template.protocol.label,
            self.config.bind_address,
            self._port,
        )

    async def stop(self) -> None:
        """Stop accepting, end open connections (each still recorded) and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._active):
            task.cancel()
        if self._active:
            await asyncio.gather(*self._active, return_exceptions=True)
        await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._active.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = self._clock()
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        local = writer.get_extra_info("sockname") or (self.config.bind_address, self._port)
        number = self._connections
        self._connections += 1
        connection = Connection(
            reader,
            writer,
            self.limits,
            source=(str(peer[0]), int(peer[1])),
            local=(str(local[0]), int(local[1])),
            number=number,
        )
        try:
            if len(self._active) <= self.limits.max_connections:
                dialogue = DIALOGUES[self.template.protocol]
                await asyncio.wait_for(dialogue(connection, self.template), self.limits.connection_timeout)
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            self._record(connection, start)
            await _close(writer)
            raise
        except Exception:
            # A dialogue bug must cost one connection, never the listener.
            log.exception("decoy %s: dialogue failed", self.decoy_id)
        self._record(connection, start)
        await _close(writer)

    def _record(self, connection: Connection, start: datetime) -> None:
        received = bytes(connection.received)
        indicators = tuple(dict.fromkeys((*exploit_indicators(received), *connection.extra_indicators)))
        credentials = tuple(connection.credentials)
        interaction = Interaction(
            interaction_id=uuid.uuid4().hex,
            decoy_id=self.decoy_id,
            protocol=self.template.protocol,
            source_address=_canonical(connection.source_address),
            source_port=connection.source_port,
            start_time=start,
            end_time=self._clock(),
            bytes_received=connection.bytes_received,
            received_sample=received[: self.limits.sample_bytes],
            stage=classify_stage(connection.bytes_received, credentials, indicators),
            credentials=credentials,
            client_banner=connection.client_banner,
            indicators=indicators,
            commands=tuple(connection.commands),
        )
        self.interaction_count += 1
        try:
            self._sink(interaction)
        except Exception:
            log.exception("decoy %s: interaction sink failed", self.decoy_id)


def _canonical(address: str) -> str:
    try:
        return parse_source_address(address)
    except InvalidArgument:
        return address


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)


class DecoyFleet:
    """Every decoy of an installation, started and stopped together."""

    def __init__(
        self,
        catalog: TemplateCatalog,
        sink: InteractionSink,
        *,
        limits: DecoyLimits | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.catalog = catalog
        self._sink = sink
        self._limits = limits
        self._clock = clock
        self._listeners: dict[str, DecoyListener] = {}

    async def start(self, configs: Sequence[DecoyConfig]) -> None:
        """Start one listener per config; on a bind failure the ones started are stopped again."""
        ids = [c.decoy_id for c in configs]
        duplicate = next((i for i in ids if ids.count(i) > 1 or i in self._listeners), None)
        if duplicate is not None:
            raise AlreadyExists("decoy", duplicate)
        started: list[DecoyListener] = []
        try:
            for config in configs:
                template = self.catalog.for_protocol(config.protocol)
                listener = DecoyListener(config, template, self._sink, limits=self._limits, clock=self._clock)
                await listener.start()
                started.append(listener)
        except BaseException:
            for listener in started:
                await listener.stop()
            raise
        self._listeners.update((listener.decoy_id, listener) for listener in started)

    def decoys(self) -> tuple[DecoyListener, ...]:
        """The listeners, in start order."""
        return tuple(self._listeners.values())

    def get(self, decoy_id: str) -> DecoyListener:
        """The listener with this id; NotFound otherwise."""
        try:
            return self._listeners[decoy_id]
        except KeyError:
            raise NotFound("decoy", decoy_id[:64]) from None

    async def stop(self) -> None:
        """Stop every listener."""
        listeners, self._listeners = list(self._listeners.values()), {}
        await asyncio.gather(*(listener.stop() for listener in listeners), return_exceptions=True)

    async def __aenter__(self) -> DecoyFleet:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
