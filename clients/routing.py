"""Traffic routing in the client: a channel that splits a service's calls across its versions.

`RoutedChannel` follows the deployment server's `WatchRoutes` for one service and sends each
call to an instance of the version the route's weights pick, with one `grpc.aio` channel per
instance address (opened on first use, closed when the address leaves the route). It is a
`grpc.aio.Channel`, so typed clients (`clients.rpc.ServiceClient`) and generated stubs work
on it unchanged. Without a route (none published yet, the deployment server unreachable
before the first one arrived, or the service's route removed) calls go to the plain target.

Picking, per call:

- with the route's sticky metadata key present in the call's metadata, the version is chosen
  by hashing the key's value (`RoutePicker`), so one user stays on one version while the
  weights stand, and raising a version's weight only moves users onto it; the instance within
  the version is also chosen by the value, for cache affinity;
- otherwise the version comes from a golden-ratio low-discrepancy sequence instead of
  independent random draws: over any run of calls the split matches the weights to within a
  fraction of a percent (a 10 % canary gets 10 % of the next hundred calls, not 10 ± 3), and
  instances within the version take turns.

While the deployment server is down the last route keeps being used; the watch reconnects
with backoff, and the first message of a new stream replaces whatever was held (so a
restarted server whose revisions began again is followed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from clients.backoff import Backoff
from clients.channel import ChannelOptions, open_channel
from clients.routes import Route, RoutePicker, VersionRoute
from shieldx.deployment.v1 import deployment_pb2_grpc, routing_pb2

log = logging.getLogger(__name__)

GOLDEN_FRACTION = 0.6180339887498949
"""1/φ: successive multiples modulo 1 spread as evenly as any sequence can."""


class GoldenSequence(random.Random):
    """Stands in for `random.random()` with the sequence start + n/φ (mod 1).

    Each value is as unpredictable to a server as a random draw, but the fraction of values
    in any interval converges to its length after a few dozen calls (discrepancy O(log n / n)
    against O(1/√n) for independent draws).
    """

    def __init__(self, start: float) -> None:
        super().__init__()
        self._position = start % 1.0

    def random(self) -> float:
        """The next value of the sequence, in [0, 1)."""
        self._position = (self._position + GOLDEN_FRACTION) % 1.0
        return self._position


@dataclass(frozen=True)
class RoutingTable:
    """One route revision, ready for picking."""

    route: Route
    """The route."""
    picker: RoutePicker
    """Picks the version of a call."""
    addresses: Mapping[str, tuple[str, ...]]
    """Instance addresses per version."""

    @classmethod
    def of(cls, route: Route) -> RoutingTable | None:
        """The table of a route, or None if no version of it has an instance."""
        picker = RoutePicker(route)
        if not picker.versions:
            return None
        return cls(route, picker, {v.version: v.addresses for v in route.versions if v.addresses})


def route_of(message: routing_pb2.Route) -> Route:
    """The domain route of a `Route` message."""
    return Route(
        service=message.service,
        revision=message.revision,
        versions=tuple(VersionRoute(v.version, v.weight_bp, tuple(v.addresses)) for v in message.versions),
        sticky_metadata_key=message.sticky_metadata_key,
    )


def _metadata_value(metadata: Any, key: str) -> str | None:
    if not metadata:
        return None
    pairs: Iterable[tuple[str, Any]] = metadata.items() if isinstance(metadata, grpc.aio.Metadata) else metadata
    for name, value in pairs:
        if name == key:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


class RoutedChannel(grpc.aio.Channel):
    """A channel to one service whose calls are split across versions by the published route."""

    def __init__(
        self,
        service: str,
        fallback: grpc.aio.Channel,
        control: grpc.aio.Channel,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel],
        close_grace_seconds: float = 5.0,
        retry_initial_seconds: float = 0.2,
        retry_max_seconds: float = 10.0,
        seed: float | None = None,
        close_control: bool = False,
    ) -> None:
        """`fallback` serves calls while no route exists; `control` reaches the deployment server
        (`close` closes it only with `close_control`); `channel_factory` opens the channel of one
        instance."""
        self.service = service
        self._fallback = fallback
        self._control = control if close_control else None
        self._stub = deployment_pb2_grpc.DeploymentServiceStub(control)
        self._factory = channel_factory
        self._close_grace = close_grace_seconds
        self._retry = (retry_initial_seconds, retry_max_seconds)
        self._sequence = GoldenSequence(random.random() if seed is None else seed)
        self._turns = itertools.count()
        self._table: RoutingTable | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.epoch = 0
        self._has_route = asyncio.Event()
        self._synced = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None

    # -- following routes --------------------------------------------------------------------

    def start(self) -> None:
        """Start following the service's route (needs a running event loop)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow(), name=f"routes:{self.service}")

    @property
    def route(self) -> Route | None:
        """The route calls follow now (None: the plain target)."""
        return self._table.route if self._table is not None else None

    async def wait_for_route(self, timeout: float) -> bool:
        """Wait until a route arrived (True) or `timeout` seconds passed (False)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._has_route.wait(), timeout)
        return self._has_route.is_set()

    async def wait_until_synced(self, timeout: float) -> bool:
        """Wait until the deployment server first answered (with a route or with none), so the
        next call goes where the route says; False if `timeout` seconds passed first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout)
        return self._synced.is_set()

    async def _follow(self) -> None:
        backoff = Backoff(*self._retry)
        while True:
            try:
                first = True
                async for message in self._stub.WatchRoutes(routing_pb2.WatchRoutesRequest(services=[self.service])):
                    self._apply(message, replace=first)
                    first = False
                    self._synced.set()
                    backoff.reset()
                log.info("route watch of %s ended; reconnecting", self.service)
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "cannot follow the routes of %s (%s: %s); retrying",
                    self.service,
                    error.code().name,
                    error.details(),
                )
            except Exception:  # the watch must outlive any bug in one message; calls keep the last route
                log.exception("route watch of %s failed; retrying", self.service)
            await asyncio.sleep(backoff.next())

    def _apply(self, message: routing_pb2.WatchRoutesResponse, *, replace: bool) -> None:
        for published in message.routes:
            if published.service != self.service:
                continue
            current = self._table.route.revision if self._table is not None else 0
            if replace or published.revision > current:
                self._install(RoutingTable.of(route_of(published)))
                replace = False
        if self.service in message.removed_services or (replace and not message.routes):
            self._install(None)

    def _install(self, table: RoutingTable | None) -> None:
        self._table = table
        self.epoch += 1
        if table is not None:
            self._has_route.set()
        wanted = {a for addresses in (table.addresses.values() if table else ()) for a in addresses}
        for address in [a for a in self._channels if a not in wanted]:
            self._retire(self._channels.pop(address))

    def _retire(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(self._close_grace))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- picking -----------------------------------------------------------------------------

    def target(self, metadata: Any = None) -> grpc.aio.Channel:
        """The channel the next call with `metadata` goes to."""
        table = self._table
        if table is None:
            return self._fallback
        sticky_key = table.route.sticky_metadata_key
        sticky = _metadata_value(metadata, sticky_key) if sticky_key else None
        version = table.picker.pick(sticky, rng=self._sequence)
        addresses = table.addresses[version]
        if len(addresses) == 1:
            address = addresses[0]
        elif sticky is not None:
            address = addresses[zlib.crc32(sticky.encode()) % len(addresses)]
        else:
            address = addresses[next(self._turns) % len(addresses)]
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = self._factory(address)
        return channel

    # -- grpc.aio.Channel --------------------------------------------------------------------

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """A routed unary-unary method."""
        return _UnaryUnary(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        """A routed server-streaming method."""
        return _UnaryStream(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]:
        """A routed client-streaming method."""
        return _StreamUnary(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        """A routed bidirectional-streaming method."""
        return _StreamStream(self, "stream_stream", method, request_serializer, response_deserializer)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The state of the plain target's channel (instance channels come and go with the route)."""
        return self._fallback.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Wait for the plain target's channel to leave `last_observed_state`."""
        await self._fallback.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until the plain target's channel is ready."""
        await self._fallback.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Stop following routes and close the instance channels and the plain target's."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        channels = [*self._channels.values(), self._fallback, *([self._control] if self._control else [])]
        self._channels.clear()
        await asyncio.gather(*(channel.close(grace) for channel in channels), *self._background)

    async def __aenter__(self) -> RoutedChannel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> bool | None:
        await self.close()
        return None


class _Routed:
    """A method of a routed channel: each call asks the channel where to go."""

    __slots__ = ("_calls", "_channel", "_deserializer", "_epoch", "_kind", "_method", "_serializer")

    def __init__(
        self,
        channel: RoutedChannel,
        kind: str,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._calls: dict[grpc.aio.Channel, Any] = {}
        self._epoch = channel.epoch

    def _multicallable(self, metadata: Any) -> Any:
        channel = self._channel
        if self._epoch != channel.epoch:  # the route changed: forget callables of retired channels
            self._calls.clear()
            self._epoch = channel.epoch
        target = channel.target(metadata)
        found = self._calls.get(target)
        if found is None:
            factory = getattr(target, self._kind)
            found = self._calls[target] = factory(self._method, self._serializer, self._deserializer)
        return found


class _UnaryUnary(_Routed, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request: Any, *, metadata: Any = None, **options: Any) -> Any:
        return self._multicallable(metadata)(request, metadata=metadata, **options)


class _UnaryStream(_Routed, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(self, request: Any, *, metadata: Any = None, **options: Any) -> Any:
        return self._multicallable(metadata)(request, metadata=metadata, **options)


class _StreamUnary(_Routed, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._multicallable(metadata)(
            request_iterator,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


class _StreamStream(_Routed, grpc.aio.StreamStreamMultiCallable[Any, Any]):
    __slots__ = ()

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._multicallable(metadata)(
            request_iterator,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


def open_routed_channel(
    service: str,
    target: str,
    control: grpc.aio.Channel,
    options: ChannelOptions | None = None,
    *,
    seed: float | None = None,
    close_control: bool = False,
) -> RoutedChannel:
    """A started `RoutedChannel` to `service`: its instances by route, `target` without one.

    `control` is a channel to the deployment server (e.g. `runtime.channel("deployment")`);
    every channel opened here (plain target and instances) gets `options` (TLS, token, retries,
    telemetry). Call from a running event loop. With `close_control`, closing the routed
    channel closes `control` too (a channel opened for it alone).
    """
    shared = options or ChannelOptions()
    routed = RoutedChannel(
        service,
        open_channel(target, shared),
        control,
        channel_factory=lambda address: open_channel(address, shared),
        seed=seed,
        close_control=close_control,
    )
    routed.start()
    return routed
