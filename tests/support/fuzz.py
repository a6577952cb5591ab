"""The bad-input fuzz harness every service's tests run against a real server.

For each RPC of a service it sends the empty message, messages with hostile field values
(huge and odd strings, extreme and negative numbers, NaN, unknown enum numbers, long repeated
fields, deep nesting), raw random bytes, truncated encodings and fields sent with the wrong
wire type. Every call must end with a status within its deadline — never INTERNAL or UNKNOWN,
never a hang — and the server must still report SERVING afterwards.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
STRINGS = [
    "",
    " ",
    "a" * 100_000,
    "é\u0301\u202e\U0001f600",
    "../../etc/passwd",
    "' OR 1=1; --",
    "\x00\x01\x7f",
    "%s%n%x",
    "-1",
    "9" * 40,
    "accounts/" + "x" * 300,
]
INT32 = [0, 1, -1, 2**31 - 1, -(2**31), 7]
INT64 = [0, 1, -1, 2**63 - 1, -(2**63), 10**15, -(10**15)]
UINT32 = [0, 1, 2**32 - 1]
UINT64 = [0, 1, 2**64 - 1]
DOUBLES = [0.0, -0.0, -1.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 1e-320, 0.5, 100.0, 101.0]
WIRE_TYPE = {
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_SFIXED64: 1,
    FieldDescriptor.TYPE_FLOAT: 5,
    FieldDescriptor.TYPE_FIXED32: 5,
    FieldDescriptor.TYPE_SFIXED32: 5,
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
}


@dataclass
class FuzzReport:
    """What the server answered, per method and status code, and anything that went wrong."""

    codes: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    calls: int = 0

    def record(self, method: str, code: grpc.StatusCode, case: str, details: str) -> None:
        self.calls += 1
        self.codes.setdefault(method, Counter())[code.name] += 1
        if code in FORBIDDEN:
            self.failures.append(f"{method} [{case}] -> {code.name}: {details[:200]}")

    def assert_clean(self) -> None:
        """Fail with every offending call listed."""
        assert not self.failures, f"{len(self.failures)} bad answers:\n" + "\n".join(self.failures[:40])


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _scalar(kind: int, rng: random.Random, enum_numbers: Sequence[int]) -> Any:
    if kind in (FieldDescriptor.TYPE_STRING,):
        return rng.choice(STRINGS)
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 16, 5000]))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        value = rng.choice(DOUBLES)
        return value if kind == FieldDescriptor.TYPE_DOUBLE or abs(value) < 1e38 or not math.isfinite(value) else 1e30
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return rng.choice(INT32)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return rng.choice(INT64)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return rng.choice(UINT32)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return rng.choice(UINT64)
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([*enum_numbers, 999, -5])
    raise AssertionError(kind)


def _fill(message: Message, rng: random.Random, depth: int) -> None:
    for fd in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        enum_numbers = [v.number for v in fd.enum_type.values] if fd.enum_type else []
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if depth <= 0:
                continue
            container = getattr(message, fd.name)
            key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            for _ in range(rng.choice([1, 3, 50])):
                key = _scalar(key_fd.type, rng, [])
                if value_fd.message_type is not None:
                    _fill(container[key], rng, depth - 1)
                else:
                    container[key] = _scalar(
                        value_fd.type, rng, [v.number for v in value_fd.enum_type.values] if value_fd.enum_type else []
                    )
            continue
        repeated = fd.is_repeated
        count = rng.choice([0, 1, 3, 1000]) if repeated else 1
        if fd.message_type is not None:
            if depth <= 0:
                continue
            if fd.message_type.full_name in (
                "google.protobuf.Struct",
                "google.protobuf.Value",
                "google.protobuf.ListValue",
            ):
                continue  # self-recursive; covered by raw bytes
            for _ in range(min(count, 20)):
                child = getattr(message, fd.name).add() if repeated else getattr(message, fd.name)
                _fill(child, rng, depth - 1)
            continue
        values = [_scalar(fd.type, rng, enum_numbers) for _ in range(count)]
        try:
            if repeated:
                getattr(message, fd.name).extend(values)
            else:
                setattr(message, fd.name, values[0])
        except (ValueError, TypeError):
            pass  # e.g. a closed enum refusing an unknown number: the raw cases cover it


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _wrong_wire_types(descriptor: Descriptor, rng: random.Random) -> bytes:
    """Each field encoded with a wire type its declaration does not allow."""
    out = bytearray()
    for fd in descriptor.fields:
        declared = WIRE_TYPE.get(fd.type, 0)
        wrong = rng.choice([w for w in (0, 1, 2, 5) if w != declared])
        out += _varint((fd.number << 3) | wrong)
        if wrong == 0:
            out += _varint(rng.getrandbits(64))
        elif wrong == 1:
            out += rng.randbytes(8)
        elif wrong == 5:
            out += rng.randbytes(4)
        else:
            payload = rng.randbytes(rng.choice([0, 3, 40]))
            out += _varint(len(payload)) + payload
    return bytes(out)


def cases(method: MethodDescriptor, rng: random.Random, rounds: int) -> Iterator[tuple[str, bytes]]:
    """(case name, request bytes) for one method."""
    request_class = _message_class(method.input_type)
    yield "empty", b""
    for i in range(rounds):
        message = request_class()
        _fill(message, rng, depth=3)
        yield f"hostile-{i}", message.SerializeToString()
    yield "random-bytes", rng.randbytes(64)
    yield "random-bytes-long", rng.randbytes(4096)
    yield "wrong-wire-types", _wrong_wire_types(method.input_type, rng)
    full = request_class()
    _fill(full, rng, depth=2)
    encoded = full.SerializeToString()
    if len(encoded) > 2:
        yield "truncated", encoded[: len(encoded) // 2]
    yield "bad-utf8", b"\x0a\x04\xff\xfe\xfd\xfc"


async def _call(
    channel: grpc.aio.Channel, path: str, streaming: bool, data: bytes, metadata: Sequence[tuple[str, str]]
) -> tuple[grpc.StatusCode, str]:
    try:
        if streaming:
            call = channel.unary_stream(path)(data, timeout=2.0, metadata=metadata)
            received = 0
            async for _ in call:
                received += 1
                if received >= 50:
                    call.cancel()
                    return grpc.StatusCode.OK, ""
            return grpc.StatusCode.OK, ""
        await channel.unary_unary(path)(data, timeout=15.0, metadata=metadata)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        code = error.code()
        if streaming and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return grpc.StatusCode.OK, "stream stayed open"  # a watch is allowed to wait for news
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.UNKNOWN, "hung past its deadline"
        return code, error.details() or ""
    except asyncio.CancelledError:
        return grpc.StatusCode.OK, "stream cancelled after 50 messages"


async def fuzz_service(
    channel: grpc.aio.Channel,
    service: ServiceDescriptor,
    *,
    seed: int = 1234,
    rounds: int = 25,
    metadata: Sequence[tuple[str, str]] = (),
    skip: Sequence[str] = (),
    concurrency: int = 8,
) -> FuzzReport:
    """Fuzz every RPC of `service` over `channel`, then check the server still reports SERVING."""
    rng = random.Random(seed)
    report = FuzzReport()
    semaphore = asyncio.Semaphore(concurrency)

    async def one(method: MethodDescriptor, case: str, data: bytes) -> None:
        async with semaphore:
            code, details = await _call(
                channel, f"/{service.full_name}/{method.name}", method.server_streaming, data, metadata
            )
        report.record(method.name, code, case, details)

    jobs = [
        one(method, case, data)
        for method in service.methods
        if method.name not in skip
        for case, data in cases(method, rng, rounds)
    ]
    await asyncio.gather(*jobs)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        report.failures.append(f"server reports {reply.status} after fuzzing")
    return report
