"""Free text: one check refuses controls, bidi formatting and line separators in every service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from servers.credits.commands import Consume, LedgerLimits, Transfer, validate_command, validate_transfer
from servers.credits.payment_refs import validate_payment_reference
from servers.deception.domain import require_text
from servers.deployment.requests import check_text
from servers.mesh.errors import InvalidArgument
from servers.mesh.text import BIDI_CONTROLS, check_free_text

REFUSED_ANYWHERE = [
    "\x00",
    "\x1b[2J",  # C0 escape
    "\x7f",
    "\x85",  # C1 next line
    "\x9b",  # C1 control sequence introducer
    *BIDI_CONTROLS,
    "\u2028",  # Zl
    "\u2029",  # Zp
]


@pytest.mark.parametrize("bad", REFUSED_ANYWHERE)
@pytest.mark.parametrize("multiline", [False, True])
def test_controls_bidi_and_separators_are_refused_naming_the_field(bad: str, multiline: bool) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_free_text(f"invoice {bad}42", "note", 100, multiline=multiline)
    assert caught.value.metadata["field"] == "note" and caught.value.reason == "INVALID_ARGUMENT"


def test_tab_and_newline_only_where_the_field_allows_them() -> None:
    assert check_free_text("line one\n\tline two", "description", 100, multiline=True) == "line one\n\tline two"
    for text in ("a\tb", "a\nb"):
        with pytest.raises(InvalidArgument):
            check_free_text(text, "reference", 100)


def test_ordinary_text_in_any_script_passes_and_length_and_presence_are_checked() -> None:
    for text in ("Rechnung Nr. 7 – März", "фактура №7", "請求書 7", "فاتورة ٧", "emoji 🧾 ok", "a\u200db"):
        assert check_free_text(text, "reference", 100) == text
    with pytest.raises(InvalidArgument):
        check_free_text("x" * 101, "reference", 100)
    with pytest.raises(InvalidArgument):
        check_free_text("", "payment_reference", 100, required=True)


LIMITS = LedgerLimits()
NOW = datetime(2026, 3, 1, tzinfo=UTC)
SERVICES: list[tuple[str, Callable[[str], object]]] = [
    ("payment_reference", validate_payment_reference),
    ("description", lambda t: validate_command(Consume("acme", 1, description=t), NOW, LIMITS)),
    ("reference", lambda t: validate_command(Consume("acme", 1, reference=t), NOW, LIMITS)),
    ("description", lambda t: validate_transfer(Transfer("t1", "a", "b", 1, description=t), LIMITS)),
    ("reason", lambda t: check_text(t, "reason", 512)),
    ("labels[team]", lambda t: require_text(t, "labels[team]", limit=256)),
]


@pytest.mark.parametrize(("field", "check"), SERVICES)
@pytest.mark.parametrize("bad", ["\u202e", "\x85", "\u2029"])
def test_every_service_applies_the_one_check(field: str, check: Callable[[str], object], bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check(f"pay{bad}ment")
    assert caught.value.metadata["field"] == field


def test_reported_evidence_keeps_what_the_attacker_sent() -> None:
    # A claimed subject with a bidi override is an attack to record, not input to refuse.
    assert require_text("svc-\u202eadmin", "report.claimed_subject", evidence=True) == "svc-\u202eadmin"
    with pytest.raises(InvalidArgument):
        require_text("a\x00b", "report.detail", evidence=True)
