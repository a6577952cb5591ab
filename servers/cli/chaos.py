"""`shieldx chaos run FILE | list | abort ID`: chaos experiments on the local (or a named) mesh."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from clients import chaos_runs
from clients.channel import ChannelOptions, open_channel
from clients.connect import connect
from clients.deployment import ChaosClient
from clients.errors import ShieldxError
from shieldx.deployment.v1 import chaos_pb2

T = TypeVar("T")


def register(commands: Any) -> None:
    """Add `chaos` with `run`, `list` and `abort`."""
    chaos = commands.add_parser("chaos", help="chaos experiments: run one from a file, list them, abort one")
    chaos.add_argument("--target", help="deployment server `host:port` (default: the local mesh)")
    actions = chaos.add_subparsers(dest="chaos_command", required=True)
    run = actions.add_parser("run", help="create, start and follow an experiment; exit 0 if its hypothesis held")
    run.add_argument("file", help="the experiment's spec, JSON or YAML (ChaosExperimentSpec, proto3 JSON names)")
    run.add_argument("--json", action="store_true", help="print the final experiment as JSON")
    run.set_defaults(run=_run, parser=run)
    listing = actions.add_parser("list", help="list experiments, newest first")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    listing.set_defaults(run=_list, parser=listing)
    abort = actions.add_parser("abort", help="roll a running experiment back now")
    abort.add_argument("id", help="the experiment's id")
    abort.add_argument("--reason", default="", help="recorded as the abort reason")
    abort.set_defaults(run=_abort, parser=abort)


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    if args.target:
        return open_channel(args.target, ChannelOptions(retry=None))
    return connect("deployment", data_dir=args.data_dir)


def _with_client(args: argparse.Namespace, work: Callable[[ChaosClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _channel(args) as channel:
            return await work(ChaosClient(channel))

    return asyncio.run(main())


def _failed(error: ShieldxError) -> int:
    print(f"{error.code.name}: {error.message}", file=sys.stderr)
    if error.reason:
        print(f"  reason: {error.reason}", file=sys.stderr)
    for field, problem in error.field_violations.items():
        print(f"  {field}: {problem}", file=sys.stderr)
    return 1


def _state(experiment: chaos_pb2.ChaosExperiment) -> str:
    return chaos_pb2.ChaosState.Name(experiment.state).removeprefix("CHAOS_STATE_")


def _progress(update: chaos_pb2.WatchChaosExperimentResponse) -> None:
    live = update.live
    print(
        f"{_state(update.experiment):9} calls {live.total_requests:6d}  errors {live.error_rate:6.1%}"
        f"  p95 {live.latency_p95_ms:8.1f} ms",
        file=sys.stderr,
    )


def _run(args: argparse.Namespace) -> int:
    try:
        spec = chaos_runs.spec_from_file(args.file)
    except (OSError, ValueError) as error:
        args.parser.error(str(error))
    try:
        final = _with_client(args, lambda client: chaos_runs.run(client, spec, _progress))
    except ShieldxError as error:
        return _failed(error)
    if args.json:
        print(json_format.MessageToJson(final))
    else:
        report = final.report
        verdict = chaos_pb2.ChaosVerdict.Name(report.verdict).removeprefix("CHAOS_VERDICT_")
        print(f"{final.id}: {_state(final)}, {verdict}" + (f" ({final.abort_reason})" if final.abort_reason else ""))
        for phase in ("before", "during", "after"):
            m = getattr(report, phase)
            print(
                f"  {phase:6}  calls {m.total_requests:7d}  failed {m.failed_requests:6d} ({m.error_rate:.1%})"
                f"  avg {m.latency_avg_ms:.1f} ms  p95 {m.latency_p95_ms:.1f} ms  p99 {m.latency_p99_ms:.1f} ms"
                f"  breaker trips {m.circuit_breaker_trips}"
            )
        if report.HasField("recovery_time"):
            print(f"  recovered in {report.recovery_time.ToNanoseconds() / 1e9:.2f} s")
    return 0 if chaos_runs.held(final) else 1


def _list(args: argparse.Namespace) -> int:
    request = chaos_pb2.ListChaosExperimentsRequest(page_size=max(1, args.limit))
    try:
        answer = _with_client(args, lambda client: client.list_experiments(request))
    except ShieldxError as error:
        return _failed(error)
    for experiment in answer.experiments:
        kind = chaos_pb2.ChaosType.Name(experiment.spec.type).removeprefix("CHAOS_TYPE_").lower()
        target = experiment.spec.target.service
        print(f"{experiment.id}  {_state(experiment):9}  {kind:19}  {target:12}  {experiment.spec.name}")
    return 0


def _abort(args: argparse.Namespace) -> int:
    request = chaos_pb2.AbortChaosExperimentRequest(experiment_id=args.id, reason=args.reason)
    try:
        answer = _with_client(args, lambda client: client.abort_experiment(request))
    except ShieldxError as error:
        return _failed(error)
    print(f"{answer.experiment.id}: {_state(answer.experiment)} ({answer.experiment.abort_reason})")
    return 0
