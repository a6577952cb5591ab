"""Private files and folders: a server's data directory is 0700 and every file in it 0600.

Databases, their WAL and shared-memory files, logs and keys hold secrets or the traces of
secrets; nobody but the service's own user may read them, whatever the umask.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TextIO

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def private_directory(path: Path) -> Path:
    """`path`, created if missing, with mode 0700."""
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIRECTORY_MODE)
    return path


def private_file(path: Path) -> Path:
    """`path`, created empty if missing, with mode 0600."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
    return path


def restrict_if_present(path: Path) -> None:
    """Make an existing file 0600 (one a program of ours did not create itself, such as SQLite's WAL)."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, FILE_MODE, follow_symlinks=False)


def open_private_log(path: Path) -> TextIO:
    """`path` opened for appending text, line-buffered, mode 0600."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, FILE_MODE)
    os.fchmod(descriptor, FILE_MODE)
    return os.fdopen(descriptor, "a", buffering=1)
