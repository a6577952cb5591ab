"""The `shieldx` command: run the mesh and work with it; one module per command group.

The CLI starts servers, so it lives under `servers/` and may import them; the client library
(`clients/`) never does. A new command group is a module here with a `register(commands)`
function that adds its sub-commands (each with `set_defaults(run=..., parser=...)`: `run(args)`
returns the exit code, `args.parser.error(...)` reports arguments that do not fit), listed once
in `GROUPS` below.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from servers.cli import call, chaos, compliance, credits, mesh, migrate, rebalance, synth, token

GROUPS: tuple[ModuleType, ...] = (mesh, token, call, credits, compliance, rebalance, synth, migrate, chaos)
"""Command groups in the order `shieldx --help` lists them."""

Run = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then each group's sub-commands."""
    parser = argparse.ArgumentParser(prog="shieldx", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path(".shieldx"), help="state directory (default: .shieldx)")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `shieldx` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Run = args.run
    return run(args)
