"""`shieldx up`, `serve`, `health` and `status`: run the mesh or one server, and see whether it is healthy."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from clients.connect import connect
from clients.deception import DeceptionClient
from clients.endpoints import SERVICES, health_status, read_endpoints
from clients.errors import ShieldxError
from servers.cli.launcher import run_up
from shieldx.deception.v1 import deception_pb2 as deception_pb


def register(commands: Any) -> None:
    """Add `up`, `serve`, `health` and `status`."""
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
    up.set_defaults(run=_up, parser=up)

    serve = commands.add_parser("serve", help="run one server in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--config", help="YAML config file")
    serve.add_argument("--port", type=int, help="gRPC port")
    serve.set_defaults(run=_serve, parser=serve)

    health = commands.add_parser(
        "health", help="one gRPC health check (exit 0 only if SERVING): the container HEALTHCHECK and probes"
    )
    health.add_argument("--address", required=True, help="HOST:PORT of the server")
    health.add_argument("--service", default="", help='health service name ("" overall, "liveness", a service)')
    health.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    health.set_defaults(run=_health, parser=health)

    status = commands.add_parser("status", help="health of each server (exit 1 unless all SERVING)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--decoy", metavar="ID", help="print only the address of decoy ID (e.g. redis-1)")
    status.set_defaults(run=_status, parser=status)


def _up(args: argparse.Namespace) -> int:
    services = tuple(s.strip() for s in args.only.split(",")) if args.only else SERVICES
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        args.parser.error(f"--only: unknown service {unknown[0]!r}")
    versions = [tuple(v.split("=", 1)) for v in args.version if "=" in v]
    if len(versions) != len(args.version) or any(s not in services or not v or v == "v1" for s, v in versions):
        args.parser.error("--version: expected SERVICE=VERSION for a service being run, VERSION other than v1")
    return asyncio.run(
        run_up(
            args.data_dir,
            services=services,
            host=args.host,
            free_ports=args.free_ports,
            versions=versions,
            config_path=args.config,
        )
    )


def _serve(args: argparse.Namespace) -> int:
    from servers.mesh.entrypoint import main as serve_main

    forwarded = ["--data-dir", str(args.data_dir)]
    if args.config:
        forwarded += ["--config", args.config]
    if args.port is not None:
        forwarded += ["--port", str(args.port)]
    serve_main(args.service, forwarded)
    return 0


def _health(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        args.parser.error("--timeout: must be above 0")
    status = asyncio.run(health_status(args.address, args.service, timeout=args.timeout))
    print(status)
    return 0 if status == "SERVING" else 1


def _status(args: argparse.Namespace) -> int:
    endpoints = read_endpoints(args.data_dir)

    async def check() -> tuple[dict[str, str], list[deception_pb.Decoy]]:
        results = await asyncio.gather(*(health_status(e.address) for e in endpoints.values()))
        statuses = dict(zip(endpoints, results, strict=True))
        decoys = await _decoys(args.data_dir) if statuses.get("deception") == "SERVING" else []
        return statuses, decoys

    statuses, decoys = asyncio.run(check())
    if args.decoy:
        return _print_decoy(decoys, args.decoy)
    if args.json:
        document: dict[str, Any] = {n: {"address": endpoints[n].address, "status": s} for n, s in statuses.items()}
        document["decoys"] = [
            {"decoy_id": d.decoy_id, "protocol": deception_pb.Protocol.Name(d.protocol), "address": _decoy_address(d)}
            for d in decoys
        ]
        print(json.dumps(document))
    else:
        width = max(len(n) for n in statuses)
        for name, status in statuses.items():
            print(f"{name.ljust(width)}  {endpoints[name].address.ljust(21)}  {status}")
        if decoys:
            print("\ndecoys (deception listens here; every connection is recorded):")
            for decoy in decoys:
                protocol = deception_pb.Protocol.Name(decoy.protocol).removeprefix("PROTOCOL_").lower()
                print(f"  {decoy.decoy_id.ljust(12)}  {protocol.ljust(6)}  {_decoy_address(decoy)}")
    return 0 if all(s == "SERVING" for s in statuses.values()) else 1


async def _decoys(data_dir: Path) -> list[deception_pb.Decoy]:
    """The decoys deception runs, or none when it cannot be asked (no credentials, refused)."""
    decoys: list[deception_pb.Decoy] = []
    async with connect("deception", data_dir=data_dir) as channel:
        client = DeceptionClient(channel, default_timeout=5)
        request = deception_pb.ListDecoysRequest(page_size=100)
        try:
            while True:
                page = await client.list_decoys(request)
                decoys.extend(page.decoys)
                if not page.next_page_token:
                    return decoys
                request.page_token = page.next_page_token
        except ShieldxError:
            return decoys


def _print_decoy(decoys: list[deception_pb.Decoy], decoy_id: str) -> int:
    for decoy in decoys:
        if decoy.decoy_id == decoy_id:
            print(_decoy_address(decoy))
            return 0
    print(f"no decoy {decoy_id!r}; running: {', '.join(d.decoy_id for d in decoys) or 'none'}", file=sys.stderr)
    return 1


def _decoy_address(decoy: deception_pb.Decoy) -> str:
    host = f"[{decoy.bind_address}]" if ":" in decoy.bind_address else decoy.bind_address
    return f"{host}:{decoy.port}"
