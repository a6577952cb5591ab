"""A throwaway certificate authority for TLS tests, made with the openssl command."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class ThrowawayCA:
    """A self-signed CA in a directory, issuing leaf certificates for 127.0.0.1/localhost."""

    def __init__(self, directory: Path, name: str = "ShieldX Test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / "ca.pem"
        self.key = directory / "ca-key.pem"
        _run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(self.key), "-out", str(self.cert), "-days", "2", "-subj", f"/CN={name}",
        )  # fmt: skip

    def issue(self, name: str, *, server: bool) -> Issued:
        """A leaf certificate signed by this CA (server: with the loopback names as SANs)."""
        key = self.directory / f"{name}-key.pem"
        request = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.pem"
        extensions = self.directory / f"{name}.ext"
        usage = "serverAuth" if server else "clientAuth"
        extensions.write_text(
            f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
            + ("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "")
        )
        _run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}",
        )  # fmt: skip
        _run(
            "x509", "-req", "-in", str(request), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
        )  # fmt: skip
        return Issued(cert, key)
