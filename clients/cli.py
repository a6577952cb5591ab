"""The `shieldx` command: run the mesh (`up`), one server (`serve`), look at it (`status`), call it (`call`)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import pkgutil
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from clients.connect import connect
from clients.errors import ShieldxError
from clients.launcher import SERVICES, health_status, read_endpoints, run_up


def _status(data_dir: Path, as_json: bool) -> int:
    endpoints = read_endpoints(data_dir)

    async def check() -> dict[str, str]:
        results = await asyncio.gather(*(health_status(e.address) for e in endpoints.values()))
        return dict(zip(endpoints, results, strict=True))

    statuses = asyncio.run(check())
    if as_json:
        print(json.dumps({n: {"address": endpoints[n].address, "status": s} for n, s in statuses.items()}))
    else:
        width = max(len(n) for n in statuses)
        for name, status in statuses.items():
            print(f"{name.ljust(width)}  {endpoints[name].address.ljust(21)}  {status}")
    return 0 if all(s == "SERVING" for s in statuses.values()) else 1


def _find_method(service: str, method: str) -> MethodDescriptor:
    for module in pkgutil.iter_modules(importlib.import_module(f"shieldx.{service}.v1").__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"shieldx.{service}.v1.{module.name}").DESCRIPTOR
            for candidate in descriptor.services_by_name.values():
                if method in candidate.methods_by_name:
                    found: MethodDescriptor = candidate.methods_by_name[method]
                    return found
    raise SystemExit(f"no RPC {method!r} in shieldx.{service}.v1")


def _call(data_dir: Path, service: str, method: str, body: str, principal: str) -> int:
    """Call one RPC with a JSON request (proto3 JSON mapping) and print the JSON answer(s)."""
    descriptor = _find_method(service, method)
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    request = json_format.Parse(body or "{}", request_type())
    path = f"/{descriptor.containing_service.full_name}/{method}"

    async def call() -> int:
        async with connect(service, data_dir=data_dir, principal=principal) as channel:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shieldx` console script."""
    parser = argparse.ArgumentParser(prog="shieldx", description=__doc__)
    parser.add_argument("--data-dir", default=".shieldx", help="state directory (default: .shieldx)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run all six servers on this machine (SQLite under --data-dir)")
    up.add_argument("--config", help="YAML config file passed to every server")
    up.add_argument("--only", help="comma-separated subset of services to run")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on")
    up.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    up.add_argument(
        "--version",
        action="append",
        default=[],
        metavar="SERVICE=VERSION",
        help="also run another version of a service (e.g. credits=v2) for canaries; repeatable",
    )

    serve = commands.add_parser("serve", help="run one server in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--config", help="YAML config file")
    serve.add_argument("--port", type=int, help="gRPC port")

    status = commands.add_parser("status", help="health of each server (exit 1 unless all SERVING)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    call = commands.add_parser("call", help="call one RPC with a JSON request, as the admin of `shieldx up`")
    call.add_argument("service", choices=SERVICES)
    call.add_argument("method", help="RPC name, e.g. GetBalance")
    call.add_argument("body", nargs="?", default="{}", help="request as JSON (proto3 JSON mapping)")
    call.add_argument("--as", dest="principal", default="admin", help="principal of the credentials file")

    rebuild = commands.add_parser(
        "rebuild-credits", help="replay every credits event into fresh read models (progress bar on stderr)"
    )
    rebuild.add_argument("--config", help="YAML config file of the credits server")
    rebuild.add_argument("--batch", type=int, help="events read per query")

    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if args.command == "up":
        services = tuple(s.strip() for s in args.only.split(",")) if args.only else SERVICES
        unknown = [s for s in services if s not in SERVICES]
        if unknown:
            parser.error(f"--only: unknown service {unknown[0]!r}")
        versions = [tuple(v.split("=", 1)) for v in args.version if "=" in v]
        if len(versions) != len(args.version) or any(s not in services or not v or v == "v1" for s, v in versions):
            parser.error("--version: expected SERVICE=VERSION for a service being run, VERSION other than v1")
        return asyncio.run(
            run_up(
                data_dir,
                services=services,
                host=args.host,
                free_ports=args.free_ports,
                versions=versions,
                config_path=args.config,
            )
        )
    if args.command == "serve":
        from servers.mesh.entrypoint import main as serve_main

        forwarded = ["--data-dir", str(data_dir)]
        if args.config:
            forwarded += ["--config", args.config]
        if args.port is not None:
            forwarded += ["--port", str(args.port)]
        serve_main(args.service, forwarded)
        return 0
    if args.command == "rebuild-credits":
        from servers.credits.rebuild import main as rebuild_main

        forwarded = ["--data-dir", str(data_dir)]
        if args.config:
            forwarded += ["--config", args.config]
        if args.batch:
            forwarded += ["--batch", str(args.batch)]
        return rebuild_main(forwarded)
    if args.command == "call":
        return _call(data_dir, args.service, args.method, args.body, args.principal)
    return _status(data_dir, args.json)


if __name__ == "__main__":
    sys.exit(main())
