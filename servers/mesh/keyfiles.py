"""Secrets a server keeps in files of its own (created once with mode 0600, never rewritten), and
the key files an older version made, read once to move them into the vault (`servers.mesh.vault`)."""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from pathlib import Path

from clients.secret_files import create_secret_file

log = logging.getLogger(__name__)


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret stored in `path`; on first use `make()` one and store it (0600, atomically).

    Processes starting together agree on one secret: each writes its own candidate to a
    private temporary file and links it into place, and only the first link succeeds.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    if create_secret_file(path, (make() + "\n").encode()):
        log.info("created secret file", extra={"path": str(path)})
    return _read(path)


def existing_or_new(path: Path, make: Callable[[], str]) -> str:
    """The secret an older version stored in `path`, or a new one from `make()` if there is no such file."""
    try:
        return _read(path)
    except FileNotFoundError:
        return make()


def _read(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("secret file is readable by others; chmod 600 it", extra={"path": str(path), "mode": oct(mode)})
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"secret file {path} is empty")
    return text
