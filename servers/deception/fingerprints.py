"""The protocol-level fingerprint of each kind of decoy: what its server says, in which order.

Plain data, drawn per installation by `templates.py` and spoken by `protocols/`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Capability bits of the handshake (include/mysql_com.h).
CLIENT_LONG_PASSWORD = 1 << 0
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
SERVER_STATUS_AUTOCOMMIT = 0x0002

# Real servers announce every capability they have; TLS is left out because the decoy cannot
# complete a TLS handshake, and a server without certificates announces exactly this.
MYSQL8_CAPABILITIES = 0xDFFFFFFF & ~CLIENT_SSL
MARIADB_CAPABILITIES = 0x81FFFFFF & ~CLIENT_SSL & ~CLIENT_LONG_PASSWORD


@dataclass(frozen=True)
class HttpFingerprint:
    """What an HTTP decoy looks like on the wire."""

    product: str
    """`nginx` or `Apache`: decides error pages and header order."""
    server_header: str
    """The `Server` header value."""
    header_order: tuple[str, ...]
    """Response header names in emission order; absent ones are skipped."""
    extra_headers: tuple[tuple[str, str], ...]
    """Fixed headers the site adds (security headers), placed per `header_order`."""
    date_format: str
    """strftime pattern of the `Date` header (IMF-fixdate, always in GMT)."""
    session_cookie: str
    """Name of the application's session cookie."""
    app_title: str
    """Title of the login page at `/`."""
    organisation: str
    """Organisation name shown on the login page."""
    csrf_field: str
    """Name of the login form's hidden anti-forgery field."""


@dataclass(frozen=True)
class SshFingerprint:
    """What an SSH decoy looks like on the wire."""

    identification: str
    """Identification line without CR LF."""
    kex_algorithms: tuple[str, ...]
    """Key-exchange algorithms in KEXINIT order."""
    host_key_algorithms: tuple[str, ...]
    """Host-key algorithms in KEXINIT order."""
    ciphers: tuple[str, ...]
    """Ciphers in KEXINIT order (both directions)."""
    macs: tuple[str, ...]
    """MACs in KEXINIT order (both directions)."""
    compression: tuple[str, ...]
    """Compression algorithms in KEXINIT order (both directions)."""


@dataclass(frozen=True)
class MysqlFingerprint:
    """What a MySQL/MariaDB decoy's handshake says."""

    server_version: str
    """Server version string of the handshake."""
    mariadb: bool
    """True for MariaDB (announces extended capabilities instead of CLIENT_MYSQL)."""
    protocol_version: int
    """Always 10 (HandshakeV10)."""
    capability_flags: int
    """Lower 32 capability bits."""
    mariadb_capabilities: int
    """MariaDB's extended capability bits (upper 32), 0 for MySQL."""
    character_set: int
    """Default collation id."""
    status_flags: int
    """Server status flags."""
    auth_plugin_name: str
    """Default authentication plugin."""
    first_connection_id: int
    """Connection id of the first connection after start (servers count up from here)."""


@dataclass(frozen=True)
class RedisFingerprint:
    """What a Redis decoy answers."""

    redis_version: str
    """`redis_version` of INFO."""
    os: str
    """`os` of INFO (`uname -srm`)."""
    gcc_version: str
    """`gcc_version` of INFO."""
    build_id: str
    """`redis_build_id` of INFO (16 hex digits)."""
    run_id: str
    """`run_id` of INFO (40 hex digits)."""
    process_id: int
    """`process_id` of INFO."""
    tcp_port: int
    """The port the configuration names; INFO reports the port the decoy really listens on."""
    started_at: int
    """Unix time the imitated server started (uptime counts from here)."""
    requires_auth: bool
    """True if commands before AUTH answer NOAUTH."""
    keys: int
    """Keys reported in db0."""
    executable: str
    """`executable` of INFO."""
    config_file: str
    """`config_file` of INFO."""


@dataclass(frozen=True)
class FtpFingerprint:
    """What an FTP decoy answers; reply texts are the daemon's own."""

    daemon: str
    """`vsftpd` or `proftpd`."""
    greeting: str
    """220 greeting; `{local_address}` is replaced by the address the client reached."""
    system_reply: str
    """Reply to SYST."""
    user_reply: str
    """Reply to USER; `{user}` is replaced by the name given."""
    login_failed_reply: str
    """Reply to a wrong PASS."""
    user_first_reply: str
    """Reply to PASS without USER."""
    login_required_reply: str
    """Reply to other commands before login."""
    unknown_reply: str
    """Reply to a command the daemon does not know; `{command}` is replaced."""
    goodbye_reply: str
    """Reply to QUIT."""
    features: tuple[str, ...]
    """FEAT lines between `211-Features:` and `211 End`."""
    max_login_failures: int
    """Failed logins after which the daemon hangs up."""


@dataclass(frozen=True)
class SmtpFingerprint:
    """What an SMTP decoy answers."""

    hostname: str
    """Fully qualified host name the server announces."""
    banner: str
    """220 banner line."""
    ehlo_capabilities: tuple[str, ...]
    """EHLO capabilities in announcement order."""


Fingerprint = HttpFingerprint | SshFingerprint | MysqlFingerprint | RedisFingerprint | FtpFingerprint | SmtpFingerprint
