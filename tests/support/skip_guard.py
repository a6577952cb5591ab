"""A pytest plugin that fails the run when a test is skipped without being listed in tests/allowed_skips.toml."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

ALLOWED_SKIPS = Path(__file__).resolve().parents[1] / "allowed_skips.toml"


@dataclasses.dataclass(frozen=True)
class AllowedSkip:
    """One skip the run may contain: tests matching `test` skipped with a message containing `reason`."""

    test: str
    reason: str

    def allows(self, nodeid: str, message: str) -> bool:
        """Whether this entry covers `nodeid` skipped with `message`."""
        pattern = ".*".join(re.escape(part) for part in self.test.split("*"))  # `[` in ids is no class
        return re.fullmatch(pattern, nodeid) is not None and self.reason in message


def load_allowed_skips(path: Path = ALLOWED_SKIPS) -> list[AllowedSkip]:
    """The allowed skips listed in `path`; every entry must name a test and give a reason."""
    entries = tomllib.loads(path.read_text())["skip"]
    return [AllowedSkip(test=entry["test"], reason=entry["reason"]) for entry in entries]


def skip_message(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The message a skipped report carries (pytest keeps it as (path, line, message))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


class SkipGuard:
    """Collects every skip of the run; at the end any skip not allowed turns the run into a failure."""

    def __init__(self, allowed: list[AllowedSkip]) -> None:
        self.allowed = allowed
        self.unexpected: list[tuple[str, str]] = []

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        message = skip_message(report)
        if not any(entry.allows(report.nodeid, message) for entry in self.allowed):
            self.unexpected.append((report.nodeid, message))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("skips not allowed (tests/allowed_skips.toml)", red=True)
        for nodeid, message in self.unexpected:
            terminalreporter.line(f"{nodeid}: {message}", red=True)
        terminalreporter.line(f"{len(self.unexpected)} unexpected skip(s): the run fails", red=True)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(load_allowed_skips()), "shieldx-skip-guard")
