"""What each imitated operating system release ships: OpenSSH builds and their algorithm lists,
web servers, databases, Redis, FTP daemons and Postfix, with the exact version strings they show.

Templates draw one release per installation and take every version from it, which is what
keeps a fingerprint consistent: an Ubuntu 22.04 SSH banner never sits next to a Debian MariaDB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
)
DEFAULT_MACS = (
    "umac-64-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha1-etm@openssh.com",
    "umac-64@openssh.com",
    "umac-128@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "hmac-sha1",
)
_ECDH = (
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
)
_DH_GROUPS = (
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
_CURVE25519 = ("curve25519-sha256", "curve25519-sha256@libssh.org")
_SNTRUP = "sntrup761x25519-sha512@openssh.com"
STRICT_KEX = "kex-strict-s-v00@openssh.com"
"""Announced by servers patched against Terrapin (CVE-2023-48795)."""


@dataclass(frozen=True)
class SshRelease:
    """One packaged OpenSSH build."""

    version: str
    """Upstream version, e.g. `8.9p1`."""
    suffix: str
    """Distribution suffix of the identification line, e.g. `Ubuntu-3ubuntu0.6` (may be empty)."""
    strict_kex: bool
    """Whether this build has the Terrapin fix (announces strict key exchange)."""


def _openssh_version(version: str) -> tuple[int, int]:
    """(major, minor) of an OpenSSH version such as `8.9p1`."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def openssh_kex(version: str, strict: bool) -> tuple[str, ...]:
    """The server KEX proposal of a stock OpenSSH `version` (upstream defaults)."""
    release = _openssh_version(version)
    kex: tuple[str, ...]
    if release >= (9, 0):
        kex = (_SNTRUP, *_CURVE25519, *_ECDH, *_DH_GROUPS)
    elif release >= (8, 5):
        kex = (*_CURVE25519, *_ECDH, _SNTRUP, *_DH_GROUPS)
    else:
        kex = (*_CURVE25519, *_ECDH, *_DH_GROUPS)
    if release >= (9, 6):
        kex = (*kex, "ext-info-s")
    return (*kex, STRICT_KEX) if strict else kex


@dataclass(frozen=True)
class OsRelease:
    """What one operating system release ships, for every decoy protocol."""

    name: str
    """Display name, e.g. `Ubuntu 22.04`."""
    family: str
    """`ubuntu`, `debian` or `rocky`."""
    kernels: tuple[str, ...]
    """Kernel release strings (`uname -r`) seen on it."""
    ssh: tuple[SshRelease, ...]
    """OpenSSH builds, oldest first."""
    nginx: str
    """nginx `Server` header of the packaged build."""
    apache: str
    """Apache `Server` header of the packaged build."""
    databases: tuple[str, ...]
    """MySQL/MariaDB server version strings as the handshake shows them."""
    redis: str
    """Packaged Redis version."""
    gcc: str
    """Compiler version Redis reports it was built with."""
    vsftpd: str
    """Packaged vsftpd version."""
    proftpd: str
    """Packaged ProFTPD version, or empty if the release does not ship it."""
    postfix: str
    """Packaged Postfix version."""
    postfix_suffix: str
    """What the distribution appends to Postfix's banner, e.g. ` (Ubuntu)`."""
    apache_distribution: str
    """Name in Apache's `(…)` comment, e.g. `Ubuntu`."""


OS_RELEASES: tuple[OsRelease, ...] = (
    OsRelease(
        name="Ubuntu 20.04",
        family="ubuntu",
        kernels=tuple(f"5.4.0-{n}-generic" for n in (150, 163, 169, 174, 182, 190, 196, 200)),
        ssh=(
            SshRelease("8.2p1", "Ubuntu-4ubuntu0.5", False),
            SshRelease("8.2p1", "Ubuntu-4ubuntu0.9", False),
            SshRelease("8.2p1", "Ubuntu-4ubuntu0.11", True),
            SshRelease("8.2p1", "Ubuntu-4ubuntu0.13", True),
        ),
        nginx="nginx/1.18.0 (Ubuntu)",
        apache="Apache/2.4.41 (Ubuntu)",
        databases=tuple(f"8.0.{n}-0ubuntu0.20.04.{p}" for n, p in ((36, 1), (37, 3), (39, 1), (41, 1))),
        redis="5.0.7",
        gcc="9.3.0",
        vsftpd="3.0.3",
        proftpd="1.3.6c",
        postfix="3.4.13",
        postfix_suffix=" (Ubuntu)",
        apache_distribution="Ubuntu",
    ),
    OsRelease(
        name="Ubuntu 22.04",
        family="ubuntu",
        kernels=tuple(f"5.15.0-{n}-generic" for n in (88, 91, 97, 101, 105, 113, 119, 125, 130)),
        ssh=(
            SshRelease("8.9p1", "Ubuntu-3ubuntu0.3", False),
            SshRelease("8.9p1", "Ubuntu-3ubuntu0.4", False),
            SshRelease("8.9p1", "Ubuntu-3ubuntu0.6", True),
            SshRelease("8.9p1", "Ubuntu-3ubuntu0.7", True),
            SshRelease("8.9p1", "Ubuntu-3ubuntu0.10", True),
        ),
        nginx="nginx/1.18.0 (Ubuntu)",
        apache="Apache/2.4.52 (Ubuntu)",
        databases=tuple(f"8.0.{n}-0ubuntu0.22.04.{p}" for n, p in ((35, 1), (36, 1), (37, 1), (39, 1), (41, 1))),
        redis="6.0.16",
        gcc="11.2.0",
        vsftpd="3.0.5",
        proftpd="1.3.7c",
        postfix="3.6.4",
        postfix_suffix=" (Ubuntu)",
        apache_distribution="Ubuntu",
    ),
    OsRelease(
        name="Ubuntu 24.04",
        family="ubuntu",
        kernels=tuple(f"6.8.0-{n}-generic" for n in (31, 35, 41, 45, 48, 51, 52, 57)),
        ssh=(
            SshRelease("9.6p1", "Ubuntu-3ubuntu13", True),
            SshRelease("9.6p1", "Ubuntu-3ubuntu13.4", True),
            SshRelease("9.6p1", "Ubuntu-3ubuntu13.5", True),
        ),
        nginx="nginx/1.24.0 (Ubuntu)",
        apache="Apache/2.4.58 (Ubuntu)",
        databases=tuple(f"8.0.{n}-0ubuntu0.24.04.{p}" for n, p in ((36, 2), (37, 1), (39, 1), (40, 1), (41, 1))),
        redis="7.0.15",
        gcc="13.2.0",
        vsftpd="3.0.5",
        proftpd="1.3.8b",
        postfix="3.8.6",
        postfix_suffix=" (Ubuntu)",
        apache_distribution="Ubuntu",
    ),
    OsRelease(
        name="Debian 11",
        family="debian",
        kernels=tuple(f"5.10.0-{n}-amd64" for n in (21, 23, 25, 26, 27, 28, 30, 32)),
        ssh=(
            SshRelease("8.4p1", "Debian-5+deb11u1", False),
            SshRelease("8.4p1", "Debian-5+deb11u2", False),
            SshRelease("8.4p1", "Debian-5+deb11u3", True),
        ),
        nginx="nginx/1.18.0",
        apache="Apache/2.4.62 (Debian)",
        databases=tuple(f"5.5.5-10.5.{n}-MariaDB-0+deb11u1" for n in (19, 21, 23, 26)),
        redis="6.0.16",
        gcc="10.2.1",
        vsftpd="3.0.3",
        proftpd="1.3.7a",
        postfix="3.5.25",
        postfix_suffix=" (Debian/GNU)",
        apache_distribution="Debian",
    ),
    OsRelease(
        name="Debian 12",
        family="debian",
        kernels=tuple(f"6.1.0-{n}-amd64" for n in (13, 17, 18, 21, 23, 25, 26, 28)),
        ssh=(
            SshRelease("9.2p1", "Debian-2+deb12u1", False),
            SshRelease("9.2p1", "Debian-2+deb12u2", True),
            SshRelease("9.2p1", "Debian-2+deb12u3", True),
            SshRelease("9.2p1", "Debian-2+deb12u5", True),
        ),
        nginx="nginx/1.22.1",
        apache="Apache/2.4.62 (Debian)",
        databases=tuple(f"5.5.5-10.11.{n}-MariaDB-0+deb12u1" for n in (4, 6, 9, 11)),
        redis="7.0.15",
        gcc="12.2.0",
        vsftpd="3.0.3",
        proftpd="1.3.8",
        postfix="3.7.11",
        postfix_suffix=" (Debian/GNU)",
        apache_distribution="Debian",
    ),
    OsRelease(
        name="Rocky Linux 9",
        family="rocky",
        kernels=(
            "5.14.0-362.8.1.el9_3.x86_64",
            "5.14.0-362.24.1.el9_3.x86_64",
            "5.14.0-427.13.1.el9_4.x86_64",
            "5.14.0-427.42.1.el9_4.x86_64",
            "5.14.0-503.14.1.el9_5.x86_64",
        ),
        ssh=(SshRelease("8.7", "", True),),
        nginx="nginx/1.20.1",
        apache="Apache/2.4.57 (Rocky Linux)",
        databases=("8.0.36", "8.0.41"),
        redis="6.2.7",
        gcc="11.4.1",
        vsftpd="3.0.5",
        proftpd="",
        postfix="3.5.9",
        postfix_suffix="",
        apache_distribution="Rocky Linux",
    ),
)

# RHEL's system-wide crypto policy (DEFAULT) replaces OpenSSH's own lists on Rocky Linux.
RHEL_KEX = (
    *_CURVE25519,
    *_ECDH,
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
)
RHEL_CIPHERS = (
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes128-ctr",
)
RHEL_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha1-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha1",
    "umac-128@openssh.com",
    "hmac-sha2-512",
)
