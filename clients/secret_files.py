"""Files holding secrets: written whole with mode 0600, so no reader ever sees a partial or world-readable one.

Both ways of writing go through a private temporary file in the target's directory (mode 0600
from its creation, flushed and fsynced) before the name appears, and the directory is fsynced
after, so a crash leaves the old file or the new one, never a torn one. Servers keep their keys
this way and the client library its credentials file; everything here blocks (callers in an
event loop go through `asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SECRET_FILE_MODE = 0o600
"""Owner read and write, nobody else anything."""


def write_secret_file(path: Path, content: bytes) -> None:
    """Write `content` to `path` atomically with mode 0600, replacing what was there."""
    scratch = _finished_scratch(path, content)
    try:
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def create_secret_file(path: Path, content: bytes) -> bool:
    """Create `path` holding `content` unless it exists; True if this call created it.

    Processes starting together agree on one file: each links its finished temporary file into
    place and only the first link succeeds, so a reader sees all of the winner's content or no file.
    """
    scratch = _finished_scratch(path, content)
    try:
        os.link(scratch, path)
    except FileExistsError:
        return False
    finally:
        scratch.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return True


def _finished_scratch(path: Path, content: bytes) -> Path:
    descriptor, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(descriptor, SECRET_FILE_MODE)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
        raise
    return Path(scratch)


def fsync_directory(directory: Path) -> None:
    """Make the entries of `directory` (a file created, renamed or removed) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
