"""Rendering the report document: JSON, Markdown (CommonMark tables), PDF (reportlab) and OSCAL assessment-results."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

OSCAL_VERSION = "1.1.2"

Renderer = Callable[[dict[str, Any]], bytes]


def render_json(document: dict[str, Any]) -> bytes:
    """One JSON document (UTF-8), keys sorted."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(document: dict[str, Any]) -> bytes:
    """CommonMark with tables."""
    report = document["report"]
    lines = [
        f"# Compliance report — assessment {report['assessment_id']}",
        "",
        f"Frameworks: {', '.join(report['frameworks'])}. Assessed {report['start_time']} to {report['finish_time']}; "
        f"generated {report['generate_time']}.",
        "",
        "## Scores",
        "",
        "| Framework | Score | Passing | Failing | Error | Not assessed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for score in document["scores"]:
        s = score["score"]
        lines.append(
            f"| {score['framework']} | {s['score']:.1%} | {s['passing']} | {s['failing']} | {s['error']} |"
            f" {s['not_assessed']} |"
        )
    lines += [
        "",
        "## Controls",
        "",
        "| Control | Severity | Status | Summary | Evidence (SHA-256) |",
        "|---|---|---|---|---|",
    ]
    for control in document["controls"]:
        digests = "<br>".join(f"`{e['sha256']}`" for e in control["evidence"])
        lines.append(
            f"| {control['control_id']} {_cell(control['title'])} | {control['severity']} | {control['status']} |"
            f" {_cell(control['summary'])} | {digests} |"
        )
    lines += ["", "## Open remediations", ""]
    if document["remediations"]:
        lines += ["| Task | Control | Severity | State | Due |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['remediation_id']} | {r['control_id']} | {r['severity']} | {r['state']} | {r['due_time'] or ''} |"
            for r in document["remediations"]
        ]
    else:
        lines.append("None.")
    head = document["evidence_chain_head"]
    lines += ["", "## Evidence chain", ""]
    if head:
        lines += [
            f"- Head sequence: {head['sequence']}",
            f"- Head chain SHA-256: `{head['chain_sha256']}`",
            f"- Signed at: {head['sign_time']}",
            f"- Signature (Ed25519, base64): `{head['signature']}`",
            f"- Public key (base64): `{head['public_key']}` (key id {head['key_id']})",
        ]
    lines.append("")
    return "\n".join(lines).encode()


def render_pdf(document: dict[str, Any]) -> bytes:
    """A PDF an auditor can read and file."""
    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7, leading=8.5)
    buffer = io.BytesIO()
    report = document["report"]
    pdf = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=12 * mm,
        rightMargin=12 * mm,
        title=f"Compliance report {report['assessment_id']}",
        author="ShieldX compliance",
    )
    story: list[Any] = [
        Paragraph(f"Compliance report — assessment {report['assessment_id']}", styles["Title"]),
        Paragraph(
            f"Frameworks: {', '.join(report['frameworks'])}. Assessed {report['start_time']} to "
            f"{report['finish_time']}; generated {report['generate_time']}.",
            styles["BodyText"],
        ),
        Spacer(1, 4 * mm),
        Paragraph("Scores", styles["Heading2"]),
    ]
    rows = [["Framework", "Score", "Passing", "Failing", "Error", "Not assessed"]]
    for score in document["scores"]:
        s = score["score"]
        rows.append(
            [score["framework"], f"{s['score']:.1%}", s["passing"], s["failing"], s["error"], s["not_assessed"]]
        )
    story.append(_table(rows, [40 * mm, 25 * mm, 25 * mm, 25 * mm, 25 * mm, 30 * mm]))
    story += [Spacer(1, 4 * mm), Paragraph("Controls", styles["Heading2"])]
    control_rows: list[list[Any]] = [["Control", "Severity", "Status", "Summary and evidence SHA-256"]]
    for control in document["controls"]:
        digests = "<br/>".join(e["sha256"] for e in control["evidence"][:6])
        more = f"<br/>(+{len(control['evidence']) - 6} more)" if len(control["evidence"]) > 6 else ""
        control_rows.append(
            [
                Paragraph(f"{control['control_id']}<br/>{_escape(control['title'])}", small),
                control["severity"],
                control["status"],
                Paragraph(
                    f"{_escape(control['summary'][:600])}<br/><font face='Courier'>{digests}{more}</font>", small
                ),
            ]
        )
    story.append(_table(control_rows, [38 * mm, 18 * mm, 22 * mm, 108 * mm]))
    story += [Spacer(1, 4 * mm), Paragraph("Open remediations", styles["Heading2"])]
    if document["remediations"]:
        rows = [["Task", "Control", "Severity", "State", "Due"]]
        rows += [
            [r["remediation_id"], r["control_id"], r["severity"], r["state"], r["due_time"] or ""]
            for r in document["remediations"]
        ]
        story.append(_table(rows, [40 * mm, 40 * mm, 22 * mm, 30 * mm, 54 * mm]))
    else:
        story.append(Paragraph("None.", styles["BodyText"]))
    head = document["evidence_chain_head"]
    story += [Spacer(1, 4 * mm), Paragraph("Evidence chain", styles["Heading2"])]
    if head:
        for label, value in (
            ("Head sequence", head["sequence"]),
            ("Head chain SHA-256", head["chain_sha256"]),
            ("Signed at", head["sign_time"]),
            ("Signature (Ed25519, base64)", head["signature"]),
            ("Public key (base64)", f"{head['public_key']} (key id {head['key_id']})"),
        ):
            story.append(Paragraph(f"<b>{label}:</b> <font face='Courier'>{value}</font>", small))
    pdf.build(story)
    return buffer.getvalue()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[list[Any]], widths: list[float]) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTSIZE", (0, 0), (-1, -1), 7),
                ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


_NS = "https://shieldx.example/ns/oscal"
"""Namespace of the OSCAL properties this service adds (evidence digests, chain head)."""
_NAMESPACE = uuid.UUID("6f1c7f7e-3d55-4b7f-9c1e-5f0b0c6a8d21")


def _uuid(*parts: str) -> str:
    """A stable (version 5) UUID for a report part: OSCAL wants UUIDs, the same report gives the same ones."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _finding(assessment_id: str, control: dict[str, Any]) -> dict[str, Any]:
    finding: dict[str, Any] = {
        "uuid": _uuid(assessment_id, "finding", control["control_id"]),
        "title": f"{control['control_id']} {control['title']}",
        "description": control["summary"],
        "props": [{"name": "status", "value": control["status"].lower(), "ns": _NS}],
        "target": {
            "type": "objective-id",
            "target-id": control["control_id"],
            "status": {"state": "satisfied" if control["status"] == "PASSING" else "not-satisfied"},
        },
    }
    if control["evidence"]:
        finding["related-observations"] = [
            {"observation-uuid": _uuid(assessment_id, "observation", e["evidence_id"])} for e in control["evidence"]
        ]
    return finding


def render_oscal(document: dict[str, Any]) -> bytes:
    """NIST OSCAL assessment-results (JSON)."""
    report = document["report"]
    assessment_id = report["assessment_id"]
    observations = [
        {
            "uuid": _uuid(assessment_id, "observation", e["evidence_id"]),
            "title": f"{e['kind']} {e['target']}"[:250],
            "description": e["summary"] or e["kind"],
            "props": [
                {"name": "evidence-id", "value": e["evidence_id"], "ns": _NS},
                {"name": "sha256", "value": e["sha256"], "ns": _NS},
                {"name": "chain-sha256", "value": e["chain_sha256"], "ns": _NS},
                {"name": "sequence", "value": str(e["sequence"]), "ns": _NS},
            ],
            "methods": ["TEST"],
            "types": ["control-objective"],
            "collected": e["collect_time"],
        }
        for e in document["evidence"]
    ]
    findings = [_finding(assessment_id, c) for c in document["controls"]]
    head = document["evidence_chain_head"] or {}
    head_props = [
        {"name": key.replace("_", "-"), "value": str(head[key]), "ns": _NS}
        for key in ("sequence", "chain_sha256", "sign_time", "signature", "public_key", "key_id")
        if head.get(key) not in (None, "")
    ]
    result: dict[str, Any] = {
        "uuid": _uuid(assessment_id, "result"),
        "title": f"Assessment {assessment_id}",
        "description": f"Automated assessment of {', '.join(report['frameworks'])} against the live ShieldX mesh.",
        "start": report["start_time"],
        "reviewed-controls": {
            "control-selections": [
                {"include-controls": [{"control-id": c["control_id"]} for c in document["controls"]]}
                if document["controls"]
                else {"include-all": {}}
            ]
        },
    }
    if report["finish_time"]:
        result["end"] = report["finish_time"]
    if observations:
        result["observations"] = observations
    if findings:
        result["findings"] = findings
    oscal = {
        "assessment-results": {
            "uuid": _uuid(assessment_id, "assessment-results"),
            "metadata": {
                "title": f"ShieldX compliance assessment {assessment_id}",
                "last-modified": report["generate_time"],
                "version": str(report["format_version"]),
                "oscal-version": OSCAL_VERSION,
                "props": head_props or [{"name": "evidence-chain", "value": "empty", "ns": _NS}],
            },
            "import-ap": {"href": f"#assessment-plan-{assessment_id}"},
            "results": [result],
        }
    }
    return json.dumps(oscal, indent=2, ensure_ascii=False).encode()


RENDERERS: dict[str, tuple[Renderer, str]] = {
    "json": (render_json, "application/json"),
    "markdown": (render_markdown, "text/markdown; charset=utf-8"),
    "pdf": (render_pdf, "application/pdf"),
    "oscal": (render_oscal, "application/json"),
}
"""Renderer and media type of each format."""
