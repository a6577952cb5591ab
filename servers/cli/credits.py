"""`shieldx credits rebuild`: replay every credits event into fresh read models."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    """Add `credits rebuild`."""
    credits = commands.add_parser("credits", help="work on the credits ledger's own store")
    jobs = credits.add_subparsers(dest="credits_command", required=True)
    rebuild = jobs.add_parser(
        "rebuild", help="replay every credits event into fresh read models (progress bar on stderr)"
    )
    rebuild.add_argument("--config", help="YAML config file of the credits server")
    rebuild.add_argument("--batch", type=int, help="events read per query")
    rebuild.set_defaults(run=_rebuild, parser=rebuild)


def _rebuild(args: argparse.Namespace) -> int:
    from servers.credits.rebuild import main as rebuild_main

    forwarded = ["--data-dir", str(args.data_dir)]
    if args.config:
        forwarded += ["--config", args.config]
    if args.batch:
        forwarded += ["--batch", str(args.batch)]
    return rebuild_main(forwarded)
