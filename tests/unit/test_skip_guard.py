"""The skip guard: a test run with a skip not listed in tests/allowed_skips.toml fails, listed ones pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.skip_guard import AllowedSkip, load_allowed_skips

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run pytest with the guard (and nothing of this repository's conftest) over one test file."""
    (tmp_path / "test_sample.py").write_text(source)
    plugins = ["-p", "no:cacheprovider", "-p", "tests.support.skip_guard"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_run_with_an_unlisted_skip_fails_and_names_it(tmp_path: Path) -> None:
    run = run_pytest(tmp_path, "import pytest\ndef test_ok(): pass\ndef test_gone(): pytest.skip('no binary')\n")
    assert run.returncode == 1, run.stdout
    assert "test_sample.py::test_gone: Skipped: no binary" in run.stdout
    assert "1 unexpected skip(s)" in run.stdout


def test_a_skip_in_a_fixture_or_at_collection_fails_the_run_too(tmp_path: Path) -> None:
    fixture = "import pytest\n@pytest.fixture\ndef db(): pytest.skip('down')\ndef test_a(db): pass\n"
    assert run_pytest(tmp_path, fixture).returncode == 1
    module = "import pytest\npytest.skip('whole module', allow_module_level=True)\ndef test_a(): pass\n"
    assert run_pytest(tmp_path, module).returncode == 1


def test_a_run_without_skips_passes_and_failures_keep_their_status(tmp_path: Path) -> None:
    assert run_pytest(tmp_path, "def test_ok(): pass\n").returncode == 0
    assert run_pytest(tmp_path, "def test_bad(): assert False\n").returncode == 1
    assert run_pytest(tmp_path, "import pytest\n@pytest.mark.xfail\ndef test_x(): assert False\n").returncode == 0


def test_an_allowed_skip_matches_its_test_and_its_reason_only() -> None:
    allowed = AllowedSkip(test="tests/unit/test_x.py::test_pg_only[sqlite*]", reason="PostgreSQL type")
    assert allowed.allows("tests/unit/test_x.py::test_pg_only[sqlite]", "Skipped: JSONB is a PostgreSQL type")
    assert not allowed.allows("tests/unit/test_x.py::test_pg_only[postgres]", "Skipped: JSONB is a PostgreSQL type")
    assert not allowed.allows("tests/unit/test_x.py::test_pg_only[sqlite]", "Skipped: no binaries")
    assert not allowed.allows("tests/unit/test_x.py::test_pg_only[s]", "Skipped: a PostgreSQL type")


def test_every_listed_skip_gives_a_reason() -> None:
    entries = load_allowed_skips()
    assert entries and all(entry.test.startswith("tests/") and entry.reason.strip() for entry in entries)
