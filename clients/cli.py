"""The `shieldx` command: run the mesh (`up`), one server (`serve`), and look at it (`status`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

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

    serve = commands.add_parser("serve", help="run one server in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--config", help="YAML config file")
    serve.add_argument("--port", type=int, help="gRPC port")

    status = commands.add_parser("status", help="health of each server (exit 1 unless all SERVING)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if args.command == "up":
        services = tuple(s.strip() for s in args.only.split(",")) if args.only else SERVICES
        unknown = [s for s in services if s not in SERVICES]
        if unknown:
            parser.error(f"--only: unknown service {unknown[0]!r}")
        return asyncio.run(
            run_up(data_dir, services=services, host=args.host, free_ports=args.free_ports, config_path=args.config)
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
    return _status(data_dir, args.json)


if __name__ == "__main__":
    sys.exit(main())
