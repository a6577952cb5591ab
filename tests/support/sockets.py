"""Plain blocking sockets for tests that speak a line protocol (FTP, SMTP, SSH banners) to a decoy."""

from __future__ import annotations

import socket


def read_line(sock: socket.socket) -> bytes:
    """Bytes up to and including the next CRLF (fewer if the peer closes first)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data
