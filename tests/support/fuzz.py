"""The bad-input fuzz harness every service's tests run against a real server.

For each RPC of a service it sends the empty message, messages with hostile field values
(huge and odd strings, extreme and negative numbers, NaN, unknown enum numbers, long repeated
fields, deep nesting), raw random bytes, truncated encodings and fields sent with the wrong
wire type. Every call must end with a status within its deadline — never INTERNAL or UNKNOWN,
never a hang — and the server must still report SERVING afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
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


NOT_REACHED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,  # stopped at request validation
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # no answer at all is no evidence of work
        grpc.StatusCode.CANCELLED,
        *FORBIDDEN,
    }
)
"""Answers that show a call never got past the gate into the service's own logic. Any other
answer (OK, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, ...) came from the logic."""


@dataclass
class MethodTally:
    """One method's calls: how many were sent, how many reached the service's logic, the codes seen."""

    sent: int = 0
    reached: int = 0
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def share(self) -> float:
        return self.reached / self.sent if self.sent else 0.0


@dataclass
class FuzzReport:
    """What the server answered, per method and status code, and anything that went wrong."""

    service: str = ""
    methods: dict[str, MethodTally] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    invalid_examples: list[str] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(t.sent for t in self.methods.values())

    @property
    def codes(self) -> dict[str, Counter[str]]:
        return {name: t.codes for name, t in self.methods.items()}

    def record(self, method: str, code: grpc.StatusCode, case: str, details: str, *, reached: bool) -> None:
        tally = self.methods.setdefault(method, MethodTally())
        tally.sent += 1
        tally.reached += reached
        tally.codes[code.name] += 1
        if code in FORBIDDEN:
            self.failures.append(f"{method} [{case}] -> {code.name}: {details[:200]}")
        elif case.startswith("valid") and not reached:
            self.invalid_examples.append(f"{method} [{case}] -> {code.name}: {details[:200]}")

    def table(self) -> str:
        """The per-method report: calls sent, calls that reached the logic, codes seen."""
        lines = [f"{self.service}: {self.calls} calls", f"  {'method':<34} {'sent':>5} {'reached':>8}  codes"]
        for name, tally in sorted(self.methods.items()):
            codes = ", ".join(f"{code} {count}" for code, count in tally.codes.most_common())
            lines.append(f"  {name:<34} {tally.sent:>5} {tally.reached:>4} {tally.share:>4.0%}  {codes}")
        return "\n".join(lines)

    def assert_clean(self) -> None:
        """Fail with every offending call listed."""
        assert not self.failures, f"{len(self.failures)} bad answers:\n" + "\n".join(self.failures[:40])

    def assert_reaches_logic(self, min_share: float = 0.3, exempt: Mapping[str, str] | None = None) -> None:
        """Fail unless every valid example of every method (but those `exempt`, each with its
        reason) reached the logic, and at least `min_share` of all calls did."""
        exempt = exempt or {}
        refused = [line for line in self.invalid_examples if line.split(" ", 1)[0] not in exempt]
        assert not refused, "valid examples refused:\n" + "\n".join(refused[:40])
        reached = sum(t.reached for t in self.methods.values())
        assert reached >= min_share * self.calls, (
            f"only {reached} of {self.calls} calls reached the logic (< {min_share:.0%}):\n{self.table()}"
        )


REPORTS: list[FuzzReport] = []
"""Every report of this test run, printed in pytest's terminal summary."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fuzz reports (a pytest hook: this module is loaded as a plugin by tests/conftest.py)."""
    if not REPORTS:
        return
    terminalreporter.section("fuzz report: per method, calls sent / reached the service's logic / codes")
    for report in REPORTS:
        terminalreporter.line(report.table())


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


Values = Mapping[str, Any]
"""Valid values by field name (a value, or a callable making one), for requests built from the contract."""
Examples = Mapping[str, Sequence[Message]]
"""Valid requests by method name, as a client really sends them."""

_PLAUSIBLE_STRINGS = {"page_token": "", "filter": "", "order_by": "", "etag": ""}


def plausible_request(descriptor: Descriptor, values: Values, depth: int = 3) -> Message:
    """A request of `descriptor` with every field set to a value a real client would send:
    `values` by field name first, else a plain value of the field's type (one member per oneof)."""
    message = _message_class(descriptor)()
    oneofs_set: set[str] = set()
    for fd in descriptor.fields:
        oneof = fd.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in oneofs_set:
                continue
            oneofs_set.add(oneof.name)
        if fd.name in values:
            value = values[fd.name]
            _assign(message, fd, value() if callable(value) else value)
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue
        if fd.message_type is not None:
            if depth <= 0 or (fd.message_type.full_name.startswith("google.protobuf.") and not _well_known(fd)):
                continue
            child = getattr(message, fd.name).add() if fd.is_repeated else getattr(message, fd.name)
            if fd.message_type.full_name == "google.protobuf.Timestamp":
                child.GetCurrentTime()
            elif fd.message_type.full_name == "google.protobuf.Duration":
                child.FromSeconds(60)
            else:
                child.CopyFrom(plausible_request(fd.message_type, values, depth - 1))
            continue
        value = _plain(fd)
        if value is not None:
            _assign(message, fd, value)
    return message


def _well_known(fd: FieldDescriptor) -> bool:
    return fd.message_type.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration")


def _plain(fd: FieldDescriptor) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        if fd.name in _PLAUSIBLE_STRINGS or fd.name.endswith("_token"):
            return None  # tokens are the service's own to issue
        if fd.name == "request_id" or fd.name.endswith("_request_id"):
            return None  # made fresh for every call
        return f"fuzz-{fd.name.replace('_', '-')}"
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return b"fuzz"
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return None
    if fd.type == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in fd.enum_type.values if v.number != 0]
        return numbers[0] if numbers else None
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.5
    if fd.name in ("page_size", "limit"):
        return 10
    return 1


def _assign(message: Message, fd: FieldDescriptor, value: Any) -> None:
    if isinstance(value, Message):
        target = getattr(message, fd.name)
        if fd.is_repeated:
            target.add().CopyFrom(value)
        else:
            target.CopyFrom(value)
    elif fd.is_repeated:
        getattr(message, fd.name).extend(value if isinstance(value, list | tuple) else [value])
    else:
        setattr(message, fd.name, value)


def _fresh_request_ids(message: Message) -> None:
    for fd in message.DESCRIPTOR.fields:
        is_request_id = fd.name == "request_id" or fd.name.endswith("_request_id")
        if fd.type == FieldDescriptor.TYPE_STRING and is_request_id and not fd.is_repeated:
            setattr(message, fd.name, uuid.uuid4().hex)


def mutate_one_field(base: Message, rng: random.Random) -> tuple[str, Message]:
    """A copy of `base` with exactly one field (perhaps inside a nested message) cleared or set hostile."""
    message = type(base)()
    message.CopyFrom(base)
    target, path = message, ""
    while True:
        fields = list(target.DESCRIPTOR.fields)
        fd = rng.choice(fields)
        path += ("." if path else "") + fd.name
        nested = fd.message_type is not None and not fd.is_repeated and not fd.message_type.GetOptions().map_entry
        if nested and target.HasField(fd.name) and rng.random() < 0.5 and getattr(target, fd.name).DESCRIPTOR.fields:
            target = getattr(target, fd.name)
            continue
        break
    if rng.random() < 0.25:
        target.ClearField(fd.name)
        return f"clear {path}", message
    target.ClearField(fd.name)
    _set_hostile(target, fd, rng)
    return f"hostile {path}", message


def _set_hostile(message: Message, fd: FieldDescriptor, rng: random.Random) -> None:
    """Give one field a hostile value (the rest of `message` stays as it is)."""
    enum_numbers = [v.number for v in fd.enum_type.values] if fd.enum_type else []
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        container = getattr(message, fd.name)
        for _ in range(rng.choice([1, 3, 50])):
            key = _scalar(key_fd.type, rng, [])
            if value_fd.message_type is not None:
                _fill(container[key], rng, 1)
            else:
                enums = [v.number for v in value_fd.enum_type.values] if value_fd.enum_type else []
                with contextlib.suppress(ValueError, TypeError):
                    container[key] = _scalar(value_fd.type, rng, enums)
        return
    if fd.message_type is not None:
        children = [getattr(message, fd.name).add() for _ in range(rng.choice([1, 3, 20]))] if fd.is_repeated else []
        for child in children or [getattr(message, fd.name)]:
            child.SetInParent()
            _fill(child, rng, 2)
        return
    count = rng.choice([1, 3, 1000]) if fd.is_repeated else 1
    values = [_scalar(fd.type, rng, enum_numbers) for _ in range(count)]
    with contextlib.suppress(ValueError, TypeError):  # a closed enum refusing an unknown number
        if fd.is_repeated:
            getattr(message, fd.name).extend(values)
        else:
            setattr(message, fd.name, values[0])


def cases(
    method: MethodDescriptor, rng: random.Random, rounds: int, bases: Sequence[Message]
) -> Iterator[tuple[str, Message | bytes]]:
    """(case name, request) for one method: valid requests, each mutated in one field at a time,
    then whole hostile messages and malformed encodings."""
    request_class = _message_class(method.input_type)
    for i in range(max(2, rounds // 4)):
        yield f"valid-{i}", bases[i % len(bases)]
    if method.input_type.fields:
        for i in range(rounds):
            name, mutated = mutate_one_field(bases[i % len(bases)], rng)
            yield f"{name} #{i}", mutated
    yield "empty", b""
    for i in range(max(1, rounds // 5)):
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
) -> tuple[grpc.StatusCode, str, bool]:
    """(code, details, reached). A stream that sent messages reached the logic however it ended;
    one that sent nothing and timed out or was cancelled did not, and is not a success."""
    received = 0
    try:
        if streaming:
            call = channel.unary_stream(path)(data, timeout=2.0, metadata=metadata)
            async for _ in call:
                received += 1
                if received >= 50:
                    call.cancel()
                    break
            return grpc.StatusCode.OK, f"{received} messages", True
        await channel.unary_unary(path)(data, timeout=15.0, metadata=metadata)
        return grpc.StatusCode.OK, "", True
    except grpc.aio.AioRpcError as error:
        code = error.code()
        if streaming and received and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return grpc.StatusCode.OK, f"open after {received} messages", True
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not streaming:
            return grpc.StatusCode.UNKNOWN, "hung past its deadline", False
        return code, error.details() or "", code not in NOT_REACHED
    except asyncio.CancelledError:
        return grpc.StatusCode.OK, f"cancelled by the harness after {received} messages", received > 0


async def fuzz_service(
    channel: grpc.aio.Channel,
    service: ServiceDescriptor,
    *,
    seed: int = 1234,
    rounds: int = 25,
    metadata: Sequence[tuple[str, str]] = (),
    skip: Sequence[str] = (),
    concurrency: int = 8,
    values: Values | None = None,
    examples: Examples | None = None,
) -> FuzzReport:
    """Fuzz every RPC of `service` over `channel`, then check the server still reports SERVING.

    Most calls are valid requests (`examples` for the method, else built from the contract with
    `values`) with one field mutated; every request id is fresh. The report counts per method
    the calls sent, those that reached the service's logic, and the codes seen.
    """
    rng = random.Random(seed)
    report = FuzzReport(service=service.full_name)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(method: MethodDescriptor, case: str, request: Message | bytes) -> None:
        if isinstance(request, Message):
            request = _with_fresh_ids(request)
        async with semaphore:
            code, details, reached = await _call(
                channel, f"/{service.full_name}/{method.name}", method.server_streaming, request, metadata
            )
        report.record(method.name, code, case, details, reached=reached)

    jobs = []
    for method in service.methods:
        if method.name in skip:
            continue
        bases = list((examples or {}).get(method.name, ())) or [plausible_request(method.input_type, values or {})]
        jobs += [one(method, case, request) for case, request in cases(method, rng, rounds, bases)]
    await asyncio.gather(*jobs)
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        report.failures.append(f"server reports {reply.status} after fuzzing")
    REPORTS.append(report)
    return report


def _with_fresh_ids(request: Message) -> bytes:
    message = type(request)()
    message.CopyFrom(request)
    _fresh_request_ids(message)
    return message.SerializeToString()
