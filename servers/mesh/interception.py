"""The interceptor chain: one grpc interceptor that runs the ordered concerns around every call.

Each concern (tracing, metrics, auth, ...) is a `CallInterceptor` with `enter`/`exit` hooks.
`InterceptorChain` wraps each method's handler once — whatever its streaming shape — in a
single wrapper that enters the applicable interceptors in order and exits them in reverse,
so a call pays one wrapper, not one per concern, and nothing is rebuilt per call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

State = TypeVar("State")
Behavior = Callable[..., Any]
Deserializer = Callable[[bytes], Any]

# Infrastructure services that every interceptor may treat specially.
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset({"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"})


@dataclass(frozen=True, slots=True)
class Method:
    """A parsed gRPC method path such as `/shieldx.credits.v1.CreditsService/Consume`."""

    path: str
    """The full path as on the wire."""
    service: str
    """Fully qualified service, e.g. `shieldx.credits.v1.CreditsService`."""
    name: str
    """Method name, e.g. `Consume`."""
    kind: str
    """`unary`, `server_stream`, `client_stream` or `bidi_stream` (prometheus `grpc_type`)."""
    span_name: str = field(init=False)
    """`package.Service/Method`, the OpenTelemetry RPC span name."""
    package: str = field(init=False)
    """The protobuf package, e.g. `shieldx.credits.v1`."""
    is_infrastructure: bool = field(init=False)
    """Health and reflection: always open, never rate limited or faulted."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "span_name", f"{self.service}/{self.name}")
        object.__setattr__(self, "package", self.service.rpartition(".")[0])
        infrastructure = self.service == HEALTH_SERVICE or self.service in REFLECTION_SERVICES
        object.__setattr__(self, "is_infrastructure", infrastructure)

    @classmethod
    def parse(cls, path: str, handler: grpc.RpcMethodHandler[Any, Any] | None = None) -> Method:
        """Parse a wire path; the handler, when known, tells the streaming shape."""
        service, _, name = path.lstrip("/").rpartition("/")
        return cls(path, service or "unknown", name or path, _kind(handler))


class CallContext:
    """The servicer context as the interceptors see it, with what they all read taken once per call.

    Converting the call's metadata to Python costs about as much as a small handler; tracing and
    auth both need it. The final status code is read once for metrics and tracing alike.
    """

    __slots__ = ("_final", "_metadata", "grpc")

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.grpc = context
        """The grpc servicer context."""
        self._metadata: tuple[tuple[str, str | bytes], ...] | None = None
        self._final: tuple[BaseException | None, grpc.StatusCode] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        """The call's metadata (converted once)."""
        if self._metadata is None:
            self._metadata = tuple(self.grpc.invocation_metadata() or ())
        return self._metadata

    def header(self, key: str) -> str | None:
        """The first value of a text metadata key, or None."""
        for name, value in self.invocation_metadata():
            if name == key:
                return value if isinstance(value, str) else None
        return None

    def peer(self) -> str:
        """The caller's address, as grpc names it (`ipv4:10.0.0.7:5050`)."""
        return str(self.grpc.peer() or "")

    async def abort_with_status(self, status: grpc.Status) -> None:
        """End the call with `status` (raises)."""
        await self.grpc.abort_with_status(status)

    def final_code(self, error: BaseException | None) -> grpc.StatusCode:
        """The status the call ended with, for interceptors outside the error mapping."""
        if self._final is None or self._final[0] is not error:
            self._final = (error, final_code(self.grpc, error))
        return self._final[1]


Context = CallContext


def _kind(handler: grpc.RpcMethodHandler[Any, Any] | None) -> str:
    if handler is None:
        return "unary"
    return {
        (False, False): "unary",
        (False, True): "server_stream",
        (True, False): "client_stream",
        (True, True): "bidi_stream",
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]


class CallInterceptor(Generic[State]):
    """One concern of the chain, expressed as `enter`/`exit` around a call of any shape.

    `enter` runs before the handler and returns state for `exit` (it may abort the call);
    `exit` runs after it with the exception it raised or None (it may raise another one, which
    the interceptors outside it then see).
    """

    def applies_to(self, method: Method) -> bool:
        """Whether this interceptor takes part in calls of `method` (a filter predicate)."""
        return True

    async def enter(self, method: Method, context: Context, request: Any) -> State:
        """Run before the handler; returns state handed to `exit`."""
        raise NotImplementedError

    async def exit(self, method: Method, context: Context, state: State, error: BaseException | None) -> None:
        """Run after the handler (error is what it raised, or None)."""

    def deserializer(self, method: Method, inner: Deserializer | None) -> Deserializer | None:
        """The request deserializer to use; the default keeps the inner one."""
        return inner


Stages = Sequence[CallInterceptor[Any]]


async def _enter_all(stages: Stages, method: Method, context: Context, request: Any, states: list[Any]) -> None:
    for stage in stages:
        states.append(await stage.enter(method, context, request))


async def _exit_all(
    stages: Stages, method: Method, context: Context, states: list[Any], error: BaseException | None
) -> BaseException | None:
    for index in range(len(states) - 1, -1, -1):
        try:
            await stages[index].exit(method, context, states[index], error)
        except BaseException as replaced:
            error = replaced
    return error


class InterceptorChain(grpc.aio.ServerInterceptor):
    """The grpc interceptor that runs `interceptors` (outermost first) around every call."""

    def __init__(self, interceptors: Stages) -> None:
        self.interceptors = list(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        path: str = handler_call_details.method
        try:
            return self._handlers[path]
        except KeyError:
            pass
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is not None:
            method = Method.parse(path, handler)
            stages = [i for i in self.interceptors if i.applies_to(method)]
            handler = _wrap(method, stages, handler) if stages else handler
        self._handlers[path] = handler
        return handler


def _wrap(method: Method, stages: Stages, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    deserialize = handler.request_deserializer
    for stage in reversed(stages):
        deserialize = stage.deserializer(method, deserialize)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary(method, stages, handler.unary_unary), deserialize, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(method, stages, handler.stream_unary), deserialize, serialize
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream(method, stages, handler.unary_stream), deserialize, serialize
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(_stream(method, stages, handler.stream_stream), deserialize, serialize)


def _unary(method: Method, stages: Stages, behavior: Behavior) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        seen = CallContext(context)
        states: list[Any] = []
        response: Any = None
        error: BaseException | None = None
        try:
            await _enter_all(stages, method, seen, request, states)
            response = behavior(request, context)
            if inspect.isawaitable(response):
                response = await response
        except BaseException as raised:
            error = raised
        error = await _exit_all(stages, method, seen, states, error)
        if error is not None:
            raise error
        return response

    return call


def _stream(method: Method, stages: Stages, behavior: Behavior) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        seen = CallContext(context)
        states: list[Any] = []
        error: BaseException | None = None
        try:
            await _enter_all(stages, method, seen, request, states)
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    yield response
            elif inspect.isawaitable(result):  # a handler that writes with context.write
                await result
        except BaseException as raised:
            error = raised
        error = await _exit_all(stages, method, seen, states, error)
        if error is not None:
            raise error

    return call


def final_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, seen from an interceptor outside the error mapping."""
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def finalized_elsewhere(error: BaseException | None) -> bool:
    """True when a response stream is being closed from outside its task (the client went away).

    Context variables set in `enter` belong to the call's own context and cannot be reset from
    the one closing the generator; that context ends with the call anyway.
    """
    return isinstance(error, GeneratorExit)
