"""Reading untrusted bytes safely: a cursor that raises instead of slicing short, and reply lines.

Every parser under `protocols/` takes bytes from a hostile client; it raises `WireError` on
anything malformed and never indexes past the end of its input.
"""

from __future__ import annotations


class WireError(ValueError):
    """Bytes from a client that do not parse as the protocol says."""


class Incomplete(WireError):
    """Not malformed yet, only short: more bytes are needed."""


def crlf(text: str) -> bytes:
    """One protocol reply line, UTF-8 with CR LF."""
    return text.encode("utf-8") + b"\r\n"


class Cursor:
    """Reads fields from untrusted bytes, raising WireError at the end instead of slicing short."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        """The next `count` bytes."""
        if count < 0 or self.offset + count > len(self.data):
            raise WireError(f"truncated: wanted {count} bytes at offset {self.offset}")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def u8(self) -> int:
        """The next byte."""
        return self.take(1)[0]

    def u16le(self) -> int:
        """The next little-endian 16-bit integer."""
        return int.from_bytes(self.take(2), "little")

    def u32le(self) -> int:
        """The next little-endian 32-bit integer."""
        return int.from_bytes(self.take(4), "little")

    def u32be(self) -> int:
        """The next big-endian (network order) 32-bit integer."""
        return int.from_bytes(self.take(4), "big")

    def until_nul(self) -> bytes:
        """Bytes up to the next NUL, which is consumed but not returned."""
        end = self.data.find(b"\x00", self.offset)
        if end < 0:
            raise WireError("unterminated string")
        chunk = self.data[self.offset : end]
        self.offset = end + 1
        return chunk

    def lenenc_int(self) -> int:
        """A MySQL length-encoded integer."""
        first = self.u8()
        if first < 0xFB:
            return first
        widths = {0xFC: 2, 0xFD: 3, 0xFE: 8}
        if first not in widths:
            raise WireError(f"bad length-encoded integer prefix {first:#x}")
        return int.from_bytes(self.take(widths[first]), "little")

    @property
    def remaining(self) -> int:
        """Bytes left to read."""
        return len(self.data) - self.offset
