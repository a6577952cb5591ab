"""Secret files: mode 0600 from the first byte, replaced whole, created once when processes race."""

from __future__ import annotations

import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from clients.secret_files import create_secret_file, write_secret_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_written_secret_is_0600_and_replaces_the_old_one_without_leaving_scratch_files(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    write_secret_file(path, b"first")
    path.chmod(0o644)
    write_secret_file(path, b"second")
    assert path.read_bytes() == b"second"
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["credentials"]


def test_creating_keeps_the_file_that_is_there(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert create_secret_file(path, b"mine")
    assert not create_secret_file(path, b"theirs")
    assert path.read_bytes() == b"mine"
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_processes_creating_at_once_all_end_up_with_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "key"
    candidates = [f"candidate-{n}".encode() * 1000 for n in range(6)]
    with ProcessPoolExecutor(max_workers=3) as pool:
        created = list(pool.map(create_secret_file, [path] * len(candidates), candidates))
    assert created.count(True) == 1
    assert path.read_bytes() == candidates[created.index(True)]
