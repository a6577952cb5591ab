"""`shieldx call`: one RPC with a JSON request, as a principal of the local mesh's credentials."""

from __future__ import annotations

import argparse
import asyncio
import importlib
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


def register(commands: Any) -> None:
    """Add `call`."""
    call = commands.add_parser("call", help="call one RPC with a JSON request, as the admin of `shieldx up`")
    call.add_argument("service", choices=SERVICES)
    call.add_argument("method", help="RPC name, e.g. GetBalance")
    call.add_argument("body", nargs="?", default="{}", help="request as JSON (proto3 JSON mapping)")
    call.add_argument("--as", dest="principal", default="admin", help="principal of the credentials file")
    call.set_defaults(run=_call, parser=call)


def _find_method(service: str, method: str) -> MethodDescriptor:
    for module in pkgutil.iter_modules(importlib.import_module(f"shieldx.{service}.v1").__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"shieldx.{service}.v1.{module.name}").DESCRIPTOR
            for candidate in descriptor.services_by_name.values():
                if method in candidate.methods_by_name:
                    found: MethodDescriptor = candidate.methods_by_name[method]
                    return found
    raise SystemExit(f"no RPC {method!r} in shieldx.{service}.v1")


def _call(args: argparse.Namespace) -> int:
    """Call one RPC with a JSON request (proto3 JSON mapping) and print the JSON answer(s)."""
    descriptor = _find_method(args.service, args.method)
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    request = json_format.Parse(args.body or "{}", request_type())
    path = f"/{descriptor.containing_service.full_name}/{args.method}"

    async def call() -> int:
        async with connect(args.service, data_dir=args.data_dir, principal=args.principal) as channel:
            try:
                if descriptor.server_streaming:
                    stream: grpc.aio.UnaryStreamMultiCallable[bytes, Message] = channel.unary_stream(
                        path, response_deserializer=response_type.FromString
                    )
                    async for item in stream(request.SerializeToString()):
                        print(json_format.MessageToJson(item), flush=True)
                else:
                    unary: grpc.aio.UnaryUnaryMultiCallable[bytes, Message] = channel.unary_unary(
                        path, response_deserializer=response_type.FromString
                    )
                    print(json_format.MessageToJson(await unary(request.SerializeToString(), timeout=30)))
            except grpc.aio.AioRpcError as error:
                failure = ShieldxError.from_rpc_error(error)
                print(f"{failure.code.name}: {failure.message}", file=sys.stderr)
                if failure.reason:
                    print(f"  reason: {failure.reason} {failure.metadata or ''}", file=sys.stderr)
                for field, problem in failure.field_violations.items():
                    print(f"  {field}: {problem}", file=sys.stderr)
                return 1
        return 0

    return asyncio.run(call())
