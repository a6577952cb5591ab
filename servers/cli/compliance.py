"""`shieldx compliance assess` and `shieldx compliance report`: assess the local mesh, write a report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from clients.compliance import ComplianceClient
from clients.connect import connect
from clients.errors import ShieldxError
from shieldx.compliance.v1 import compliance_pb2 as pb

T = TypeVar("T")

FRAMEWORKS = {
    "all": pb.FRAMEWORK_UNSPECIFIED,
    "soc2": pb.FRAMEWORK_SOC2,
    "iso27001": pb.FRAMEWORK_ISO27001,
    "gdpr": pb.FRAMEWORK_GDPR,
    "pci-dss": pb.FRAMEWORK_PCI_DSS,
}
FORMATS = {
    "json": pb.REPORT_FORMAT_JSON,
    "markdown": pb.REPORT_FORMAT_MARKDOWN,
    "pdf": pb.REPORT_FORMAT_PDF,
    "oscal": pb.REPORT_FORMAT_OSCAL_JSON,
}


def register(commands: Any) -> None:
    """Add `compliance assess` and `compliance report`."""
    group = commands.add_parser("compliance", help="assess the mesh against SOC 2, ISO 27001, GDPR and PCI DSS")
    actions = group.add_subparsers(dest="compliance_command", required=True)
    assess = actions.add_parser("assess", help="run an assessment now and print the scores")
    assess.add_argument("--framework", choices=FRAMEWORKS, default="all")
    assess.add_argument("--as", dest="principal", default="admin", help="principal of the credentials file")
    assess.set_defaults(run=_assess, parser=assess)
    report = actions.add_parser("report", help="assess (or take an assessment) and write a report")
    report.add_argument("--format", choices=FORMATS, default="pdf")
    report.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    report.add_argument("--framework", choices=FRAMEWORKS, default="all")
    report.add_argument("--assessment", default="", help="report on this assessment instead of running one")
    report.add_argument("--as", dest="principal", default="admin", help="principal of the credentials file")
    report.set_defaults(run=_report, parser=report)


async def _with_progress(label: str, work: Awaitable[T]) -> T:
    """Await `work` while a progress line shows the time it has taken so far (on stderr)."""
    task = asyncio.ensure_future(work)
    with tqdm(desc=label, total=None, unit="s", file=sys.stderr, bar_format="{desc}: {elapsed}") as bar:
        while not task.done():
            await asyncio.wait([task], timeout=0.1)
            bar.update(0)
            bar.refresh()
    return task.result()


async def _run_assessment(client: ComplianceClient, framework: str) -> pb.Assessment:
    request = pb.RunAssessmentRequest(framework=FRAMEWORKS[framework], request_id=str(uuid.uuid4()))
    response = await _with_progress("assessing the live mesh", client.run_assessment(request, timeout=300))
    return response.assessment


def _print_scores(assessment: pb.Assessment) -> None:
    print(f"assessment {assessment.assessment_id}: {assessment.evidence_count} pieces of evidence")
    print(f"{'framework':<10} {'score':>7} {'pass':>5} {'fail':>5} {'error':>5} {'manual':>6}")
    for score in assessment.scores:
        s = score.score
        name = pb.Framework.Name(score.framework).removeprefix("FRAMEWORK_")
        print(
            f"{name:<10} {s.score:>7.1%} {s.passing_controls:>5} {s.failing_controls:>5} {s.error_controls:>5}"
            f" {s.not_assessed_controls:>6}"
        )
    failing = [r for r in assessment.results if r.status == pb.CONTROL_STATUS_FAILING]
    for result in failing:
        print(f"  FAILING {result.control_id}: {result.summary[:160]}")


def _assess(args: argparse.Namespace) -> int:
    async def main() -> int:
        channel = connect("compliance", data_dir=args.data_dir, principal=args.principal)
        try:
            _print_scores(await _run_assessment(ComplianceClient(channel), args.framework))
        finally:
            await channel.close()
        return 0

    return _guarded(main())


def _report(args: argparse.Namespace) -> int:
    async def main() -> int:
        channel = connect("compliance", data_dir=args.data_dir, principal=args.principal)
        client = ComplianceClient(channel)
        try:
            assessment_id = args.assessment
            if not assessment_id:
                assessment = await _run_assessment(client, args.framework)
                _print_scores(assessment)
                assessment_id = assessment.assessment_id
            report = await client.generate_report(
                pb.GenerateReportRequest(
                    assessment_id=assessment_id, framework=FRAMEWORKS[args.framework], format=FORMATS[args.format]
                )
            )
        finally:
            await channel.close()
        args.output.write_bytes(report.content)
        head = report.chain_head
        print(f"wrote {args.output} ({len(report.content)} bytes, {report.content_type}), report id {report.report_id}")
        print(f"evidence chain head {head.sequence} {head.chain_sha256}, signed by key {head.key_id}")
        return 0

    return _guarded(main())


def _guarded(work: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(work)
    except ShieldxError as error:
        print(f"{error.code.name}: {error.message}", file=sys.stderr)
        return 1
    except (KeyError, FileNotFoundError):
        print("no local mesh found (run `shieldx up` first, or pass --data-dir)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr)
        return 130
