"""`shieldx call`: one RPC with a JSON request, as a principal of the local mesh's credentials."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import pkgutil
import sys
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from clients.connect import connect
from clients.endpoints import SERVICES
from clients.errors import ShieldxError
from clients.routing import RoutedChannel


def register(commands: Any) -> None:
    """Add `call`."""
    call = commands.add_parser(
        "call",
        help="call one RPC with a JSON request, as the admin of `shieldx up` (server streams print JSON lines)",
    )
    call.add_argument("service", nargs="?", choices=SERVICES)
    call.add_argument("method", nargs="?", help="RPC name, e.g. GetBalance")
    call.add_argument(
        "body", nargs="?", help="request as JSON (proto3 JSON mapping); read from stdin when left out and piped"
    )
    call.add_argument("--as", dest="principal", default="admin", help="principal of the credentials file")
    call.add_argument("--list", metavar="SERVICE", choices=SERVICES, help="list the RPCs of SERVICE and exit")
    call.set_defaults(run=_call, parser=call)


def _methods(service: str) -> list[MethodDescriptor]:
    found: list[MethodDescriptor] = []
    for module in pkgutil.iter_modules(importlib.import_module(f"shieldx.{service}.v1").__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"shieldx.{service}.v1.{module.name}").DESCRIPTOR
            for candidate in descriptor.services_by_name.values():
                found.extend(candidate.methods)
    return found


def _list(service: str) -> int:
    for method in _methods(service):
        answer = f"stream {method.output_type.name}" if method.server_streaming else method.output_type.name
        print(f"{method.containing_service.full_name}/{method.name}({method.input_type.name}) -> {answer}")
    return 0


def _call(args: argparse.Namespace) -> int:
    """Call one RPC with a JSON request (proto3 JSON mapping) and print the JSON answer(s)."""
    if args.list:
        return _list(args.list)
    if not args.service or not args.method:
        args.parser.error("SERVICE and METHOD are required (or --list SERVICE)")
    descriptor = next((m for m in _methods(args.service) if m.name == args.method), None)
    if descriptor is None:
        print(
            f"no RPC {args.method!r} in shieldx.{args.service}.v1 (shieldx call --list {args.service})", file=sys.stderr
        )
        return 2
    body = args.body
    if body is None:
        body = "{}" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    try:
        request = json_format.Parse(body.strip() or "{}", request_type())
    except json_format.ParseError as error:
        print(f"bad request for {descriptor.input_type.full_name}: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_send(args, descriptor, request, response_type))
    except BrokenPipeError:
        # The reader went away (`shieldx call ... | head`): stop quietly, like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _send(
    args: argparse.Namespace, descriptor: MethodDescriptor, request: Message, response_type: type[Message]
) -> int:
    path = f"/{descriptor.containing_service.full_name}/{descriptor.name}"
    async with connect(args.service, data_dir=args.data_dir, principal=args.principal) as channel:
        if isinstance(channel, RoutedChannel):
            await channel.wait_until_synced(2.0)  # so this one call already goes where the route says
        try:
            if descriptor.server_streaming:
                stream: grpc.aio.UnaryStreamMultiCallable[bytes, Message] = channel.unary_stream(
                    path, response_deserializer=response_type.FromString
                )
                async for item in stream(request.SerializeToString()):
                    print(json_format.MessageToJson(item, indent=None), flush=True)
            else:
                unary: grpc.aio.UnaryUnaryMultiCallable[bytes, Message] = channel.unary_unary(
                    path, response_deserializer=response_type.FromString
                )
                print(json_format.MessageToJson(await unary(request.SerializeToString(), timeout=30)), flush=True)
        except (grpc.aio.AioRpcError, ShieldxError) as error:
            failure = error if isinstance(error, ShieldxError) else ShieldxError.from_rpc_error(error)
            print(f"{failure.code.name}: {failure.message}", file=sys.stderr)
            if failure.reason:
                print(f"  reason: {failure.reason} {failure.metadata or ''}", file=sys.stderr)
            for field, problem in failure.field_violations.items():
                print(f"  {field}: {problem}", file=sys.stderr)
            return 1
    return 0
