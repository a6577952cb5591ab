"""`python -m servers.<name>`: parse the command line, load config, run the service's builder."""

from __future__ import annotations

import os

# gRPC's C core reads this once, at import: its INFO lines (GOAWAY and the like) are not ours
# to print. An operator can still set GRPC_VERBOSITY to see them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import importlib
import sys

from servers.mesh.config import ConfigError, load_config
from servers.mesh.server import ServiceBuilder, serve


def main(service: str, argv: list[str] | None = None) -> None:
    """Run one service until SIGTERM; exits 2 on bad configuration."""
    parser = argparse.ArgumentParser(prog=f"python -m servers.{service}", description=f"Run the {service} server.")
    parser.add_argument("--config", help="YAML config file (default: $SHIELDX_CONFIG)")
    parser.add_argument("--port", type=int, help="gRPC port (0: any free port)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus /metrics port")
    parser.add_argument("--data-dir", help="where SQLite stores, keys and credentials live")
    args = parser.parse_args(argv)
    try:
        config = load_config(service, args.config)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.port is not None:
        config.port = args.port
    if args.metrics_port is not None:
        config.metrics_port = args.metrics_port
    if args.data_dir:
        config.data_dir = args.data_dir
    build: ServiceBuilder = importlib.import_module(f"servers.{service}.service").build
    serve(config, build)
