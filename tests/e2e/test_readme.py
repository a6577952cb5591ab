"""The README, walked as a newcomer would: set up from a copy of the repository, start the mesh
with the first set-up command, then run every walkthrough's commands as written."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Readme:
    """The parts of README.md that a newcomer runs."""

    setup: str
    """The first set-up command (creates the venv, installs, runs `shieldx up`)."""
    preamble: str
    """The commands every walkthrough starts from (the second terminal)."""
    walkthroughs: dict[str, list[str]]
    """Each walkthrough's blocks of commands, by its heading, in the README's order. A block that
    starts with `.venv/bin/shieldx up` is the first terminal: it restarts the mesh."""


def section(text: str, heading: str) -> str:
    """The body of a `## heading` section, up to the next `## ` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def read_readme(path: Path) -> Readme:
    """Split README.md into the set-up command, the walkthrough preamble and the walkthroughs."""
    text = path.read_text()
    setup = FENCE.findall(section(text, "Set up"))[0].strip()
    walk = section(text, "Walkthroughs")
    head, *parts = re.split(r"^### ", walk, flags=re.MULTILINE)
    walkthroughs = {part.splitlines()[0]: FENCE.findall(part) for part in parts}
    return Readme(setup, "\n".join(FENCE.findall(head)), walkthroughs)


def test_the_readme_has_walkthroughs_with_commands() -> None:
    readme = read_readme(ROOT / "README.md")
    assert readme.setup.endswith("shieldx up"), "the first set-up command starts the mesh"
    assert len(readme.walkthroughs) >= 4
    for title, blocks in readme.walkthroughs.items():
        assert any(block.strip() for block in blocks), f"walkthrough {title!r} has no commands"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's files as a fresh clone would have them (tracked and new, not ignored)."""
    target = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


class Mesh:
    """`shieldx up` running in a copy of the repository, as the first terminal of the README."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, command: str) -> None:
        """Run `command` (a `shieldx up ...` line) until every server is SERVING."""
        log_path = self.folder / "up.log"
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        wait_until(
            lambda: process.poll() is not None or "all servers SERVING" in log_path.read_text(),
            timeout=180,
            what=f"{command}: all servers SERVING",
        )
        assert process.poll() is None, log_path.read_text()

    def stop(self) -> None:
        """Ctrl-C, as a person stops it."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


@pytest.fixture(scope="module")
def mesh(checkout: Path) -> Iterator[Mesh]:
    """The first set-up command, as written: install, then `shieldx up` left running."""
    setup = read_readme(checkout / "README.md").setup
    install, _, start = setup.rpartition(" && ")
    subprocess.run(["bash", "-euo", "pipefail", "-c", install], cwd=checkout, check=True, timeout=600)
    running = Mesh(checkout)
    running.start(start)
    try:
        yield running
    finally:
        running.stop()


def test_every_walkthrough_runs_as_written(mesh: Mesh) -> None:
    readme = read_readme(mesh.folder / "README.md")
    failures: list[str] = []
    for title, blocks in readme.walkthroughs.items():
        for block in blocks:
            if block.startswith(".venv/bin/shieldx up"):
                mesh.stop()
                mesh.start(block.strip())
                continue
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", f"{readme.preamble}\n{block}"],
                check=False,
                cwd=mesh.folder,
                capture_output=True,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                failures.append(f"### {title} (exit {done.returncode})\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                break
    assert not failures, "\n\n".join(failures)
