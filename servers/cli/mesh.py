"""`shieldx up`, `serve` and `status`: run the mesh or one server, and see whether it is healthy."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from clients.endpoints import SERVICES, health_status, read_endpoints
from servers.cli.launcher import run_up


def register(commands: Any) -> None:
    """Add `up`, `serve` and `status`."""
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

    status = commands.add_parser("status", help="health of each server (exit 1 unless all SERVING)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
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


def _status(args: argparse.Namespace) -> int:
    endpoints = read_endpoints(args.data_dir)

    async def check() -> dict[str, str]:
        results = await asyncio.gather(*(health_status(e.address) for e in endpoints.values()))
        return dict(zip(endpoints, results, strict=True))

    statuses = asyncio.run(check())
    if args.json:
        print(json.dumps({n: {"address": endpoints[n].address, "status": s} for n, s in statuses.items()}))
    else:
        width = max(len(n) for n in statuses)
        for name, status in statuses.items():
            print(f"{name.ljust(width)}  {endpoints[name].address.ljust(21)}  {status}")
    return 0 if all(s == "SERVING" for s in statuses.values()) else 1
