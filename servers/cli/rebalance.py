"""`shieldx rebalance start | status`: move accounts onto the shards the ring now assigns them to."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from typing import Any

from tqdm import tqdm

from clients.connect import connect
from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from shieldx.sharding.v1 import sharding_pb2 as pb


def register(commands: Any) -> None:
    """Add `rebalance start` and `rebalance status`."""
    rebalance = commands.add_parser("rebalance", help="move accounts after shards were added or removed")
    steps = rebalance.add_subparsers(dest="rebalance_command", required=True)
    start = steps.add_parser("start", help="start a rebalance (or join the one running)")
    start.add_argument("--follow", action="store_true", help="show progress until it completes")
    start.set_defaults(run=_start, parser=start)
    status = steps.add_parser("status", help="progress of a rebalance (the latest if no id is given)")
    status.add_argument("rebalance_id", nargs="?", default="", help="rebalance id")
    status.add_argument("--follow", action="store_true", help="show progress until it completes")
    status.set_defaults(run=_status, parser=status)


def _start(args: argparse.Namespace) -> int:
    request = pb.StartRebalanceRequest(request_id=f"cli-{uuid.uuid4().hex}")
    return _run(args, lambda client: client.start_rebalance(request))


def _status(args: argparse.Namespace) -> int:
    request = pb.GetRebalanceStatusRequest(rebalance_id=args.rebalance_id)
    return _run(args, lambda client: client.get_rebalance_status(request))


def _run(args: argparse.Namespace, first_call: Any) -> int:
    async def run() -> int:
        async with connect("sharding", data_dir=args.data_dir) as channel:
            client = ShardingClient(channel)
            rebalance = (await first_call(client)).rebalance
            if args.follow:
                rebalance = await _follow(client, rebalance)
            _print(rebalance)
            return 1 if rebalance.failed_accounts else 0

    try:
        return asyncio.run(run())
    except ShieldxError as error:
        print(f"{error.code.name}: {error.message}", file=sys.stderr)
        return 1


async def _follow(client: ShardingClient, rebalance: pb.Rebalance) -> pb.Rebalance:
    with tqdm(total=rebalance.total_accounts, unit=" accounts", file=sys.stderr) as bar:
        while rebalance.phase != pb.REBALANCE_PHASE_COMPLETED:
            bar.total = rebalance.total_accounts
            bar.n = rebalance.done_accounts
            bar.set_postfix(phase=pb.RebalancePhase.Name(rebalance.phase).removeprefix("REBALANCE_PHASE_").lower())
            bar.refresh()
            await asyncio.sleep(0.5)
            request = pb.GetRebalanceStatusRequest(rebalance_id=rebalance.rebalance_id)
            rebalance = (await client.get_rebalance_status(request)).rebalance
        bar.n = rebalance.done_accounts
        bar.refresh()
    return rebalance


def _print(rebalance: pb.Rebalance) -> None:
    phase = pb.RebalancePhase.Name(rebalance.phase).removeprefix("REBALANCE_PHASE_").lower()
    print(
        f"rebalance {rebalance.rebalance_id or '-'}: {phase}, {rebalance.done_accounts} of"
        f" {rebalance.total_accounts} accounts moved, {rebalance.failed_accounts} failed"
    )
    for failure in rebalance.failures:
        print(f"  {failure.move.account_id}: {failure.error} ({failure.attempts} attempts)")
