"""Decoy templates: one self-consistent service fingerprint per protocol, drawn per installation.

An installation first draws an operating system release; every product version, kernel,
compiler, distribution suffix and reply text is then taken from what that release really
ships, so an SSH banner from Ubuntu 22.04 is never next to a MariaDB build from Debian. Host
names, the organisation's domain, run ids and counters come from the installation seed, so two
installations do not look alike and nothing is a stock value an attacker can search for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from servers.deception.domain import Protocol
from servers.deception.installation import Draw, Installation
from servers.mesh.errors import InvalidArgument, NotFound

# --- What each operating system release ships -------------------------------------------------

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


def _openssh_kex(version: str, strict: bool) -> tuple[str, ...]:
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

# RHEL's system-wide crypto policy (DEFAULT) replaces OpenSSH's own lists.
_RHEL_KEX = (
    *_CURVE25519,
    *_ECDH,
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
)
_RHEL_CIPHERS = (
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes128-ctr",
)
_RHEL_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha1-etm@openssh.com",
    "umac-128-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha1",
    "umac-128@openssh.com",
    "hmac-sha2-512",
)

# --- Names an installation draws from ---------------------------------------------------------

_ORG_HEADS = (
    "north",
    "blue",
    "silver",
    "granite",
    "harbor",
    "cedar",
    "summit",
    "river",
    "atlas",
    "lumen",
    "vertex",
    "orbit",
    "kestrel",
    "meridian",
    "quarry",
    "tandem",
    "copper",
    "juniper",
    "falcon",
    "pioneer",
    "beacon",
    "sterling",
    "crescent",
    "mosaic",
    "nimbus",
    "evergreen",
    "westfield",
    "ironwood",
    "clearwater",
    "redwood",
    "oakridge",
    "bayside",
    "highland",
    "stonebridge",
)
_ORG_TAILS = (
    "labs",
    "systems",
    "logistics",
    "health",
    "finance",
    "works",
    "data",
    "capital",
    "retail",
    "freight",
    "media",
    "energy",
    "partners",
    "analytics",
    "networks",
    "group",
    "holdings",
    "foods",
    "legal",
    "mobility",
    "insurance",
    "payments",
    "studio",
    "supply",
)
_TLDS = ("com", "com", "com", "net", "io", "co", "de", "eu", "co.uk", "nl", "fr", "ch", "se", "pl")
_SITES = ("fra", "ams", "iad", "sjc", "lon", "par", "sin", "nyc", "dal", "ber", "waw", "sto", "dub", "mad")
_ENVS = ("prd", "prod", "live", "p", "ops")
_ROLES: dict[Protocol, tuple[str, ...]] = {
    Protocol.HTTP: ("web", "app", "portal", "www", "intranet"),
    Protocol.SSH: ("bastion", "jump", "app", "ops", "srv", "build"),
    Protocol.MYSQL: ("db", "mysql", "sql", "dbm"),
    Protocol.REDIS: ("cache", "redis", "kv", "sess"),
    Protocol.FTP: ("ftp", "files", "transfer", "edi"),
    Protocol.SMTP: ("mail", "mx", "smtp", "relay"),
}
_APPS = (
    "Employee Portal",
    "Intranet",
    "Webmail",
    "Admin Console",
    "VPN Portal",
    "Helpdesk",
    "Timesheets",
    "Partner Portal",
    "Document Center",
    "Payroll",
)
_SESSION_COOKIES = {"nginx": ("sessionid", "connect.sid", "JSESSIONID", "_session"), "Apache": ("PHPSESSID",)}


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
    """`tcp_port` of INFO (what the config file says, not the decoy's bound port)."""
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


@dataclass(frozen=True)
class Template:
    """A decoy template: one service fingerprint, consistent with itself and its OS release."""

    template_id: str
    """Stable id, the protocol's label (e.g. `ssh`)."""
    protocol: Protocol
    """The protocol spoken."""
    product: str
    """Product imitated, e.g. `OpenSSH`."""
    product_version: str
    """Its version, e.g. `8.9p1`."""
    os_family: str
    """The OS release imitated, e.g. `Ubuntu 22.04`."""
    hostname: str
    """Host name presented."""
    banner: str
    """The first line(s) the decoy sends, or a response head for HTTP, for display."""
    fingerprint: Fingerprint
    """Protocol-specific details."""


@dataclass(frozen=True)
class Naming:
    """The host naming scheme of one installation."""

    domain: str
    """The organisation's DNS domain."""
    organisation: str
    """The organisation's display name."""
    style: int
    """Which host-name pattern the installation uses."""
    site: str
    """Site code used by site-style names."""
    env: str
    """Environment prefix used by env-style names."""

    def host(self, role: str, number: int) -> str:
        """Short host name of a server in `role`."""
        if self.style == 0:
            return f"{role}{number:02d}"
        if self.style == 1:
            return f"{self.site}-{role}-{number:02d}"
        return f"{self.env}-{role}{number}"

    def fqdn(self, role: str, number: int) -> str:
        """Fully qualified host name of a server in `role`."""
        return f"{self.host(role, number)}.{self.domain}"


def draw_naming(installation: Installation) -> Naming:
    """The installation's organisation and host-name scheme."""
    draw = installation.draw("naming")
    head, tail = draw.choice(_ORG_HEADS), draw.choice(_ORG_TAILS)
    joiner = draw.choice(("", "", "-"))
    return Naming(
        domain=f"{head}{joiner}{tail}.{draw.choice(_TLDS)}",
        organisation=f"{head.capitalize()} {tail.capitalize()}",
        style=draw.below(3),
        site=draw.choice(_SITES),
        env=draw.choice(_ENVS),
    )


def draw_os_release(installation: Installation) -> OsRelease:
    """The operating system release the whole installation imitates."""
    return installation.draw("os").choice(OS_RELEASES)


def build_templates(installation: Installation) -> tuple[Template, ...]:
    """Every template of an installation, in protocol order; the same seed gives the same ones."""
    release = draw_os_release(installation)
    naming = draw_naming(installation)
    kernel = installation.draw("kernel").choice(release.kernels)
    return (
        _http(installation.draw("http"), release, naming),
        _ssh(installation.draw("ssh"), release, naming),
        _mysql(installation.draw("mysql"), release, naming),
        _redis(installation, release, naming, kernel),
        _ftp(installation.draw("ftp"), release, naming),
        _smtp(installation.draw("smtp"), release, naming),
    )


class TemplateCatalog:
    """The templates of one installation, looked up by id or protocol."""

    def __init__(self, installation: Installation) -> None:
        self.installation = installation
        self._templates = {t.template_id: t for t in build_templates(installation)}

    def all(self) -> tuple[Template, ...]:
        """Every template, in protocol order."""
        return tuple(self._templates.values())

    def get(self, template_id: str) -> Template:
        """The template with this id; InvalidArgument if empty, NotFound if unknown."""
        if not template_id.strip():
            raise InvalidArgument("template_id", "must not be empty")
        try:
            return self._templates[template_id.strip().lower()]
        except KeyError:
            raise NotFound("template", template_id[:64]) from None

    def for_protocol(self, protocol: Protocol) -> Template:
        """The template of a protocol."""
        return self._templates[protocol.label]


def _role_host(draw: Draw, naming: Naming, protocol: Protocol) -> tuple[str, str]:
    role = draw.choice(_ROLES[protocol])
    number = draw.between(1, 12)
    return naming.host(role, number), naming.fqdn(role, number)


def _http(draw: Draw, release: OsRelease, naming: Naming) -> Template:
    short, _ = _role_host(draw, naming, Protocol.HTTP)
    product = draw.choice(("nginx", "Apache"))
    server = release.nginx if product == "nginx" else release.apache
    security = (("X-Frame-Options", "SAMEORIGIN"), ("X-Content-Type-Options", "nosniff"))
    extra = tuple(h for h in security if draw.chance(0.6))
    order: tuple[str, ...]
    if product == "nginx":
        order = (
            "Server",
            "Date",
            "Content-Type",
            "Content-Length",
            "Connection",
            "Set-Cookie",
            "X-Frame-Options",
            "X-Content-Type-Options",
            "Cache-Control",
        )
    else:
        order = (
            "Date",
            "Server",
            "Set-Cookie",
            "Cache-Control",
            "X-Frame-Options",
            "X-Content-Type-Options",
            "Content-Length",
            "Keep-Alive",
            "Connection",
            "Content-Type",
        )
    fingerprint = HttpFingerprint(
        product=product,
        server_header=server,
        header_order=order,
        extra_headers=extra,
        date_format="%a, %d %b %Y %H:%M:%S GMT",
        session_cookie=draw.choice(_SESSION_COOKIES[product]),
        app_title=draw.choice(_APPS),
        organisation=naming.organisation,
        csrf_field=draw.choice(("csrf_token", "_token", "authenticity_token", "csrfmiddlewaretoken")),
    )
    name, _, version = server.partition("/")
    return Template(
        template_id=Protocol.HTTP.label,
        protocol=Protocol.HTTP,
        product=name,
        product_version=version.split(" ")[0],
        os_family=release.name,
        hostname=short,
        banner=f"Server: {server}",
        fingerprint=fingerprint,
    )


def _ssh(draw: Draw, release: OsRelease, naming: Naming) -> Template:
    short, _ = _role_host(draw, naming, Protocol.SSH)
    build = draw.choice(release.ssh)
    identification = f"SSH-2.0-OpenSSH_{build.version}" + (f" {build.suffix}" if build.suffix else "")
    kex: tuple[str, ...]
    ciphers: tuple[str, ...]
    macs: tuple[str, ...]
    if release.family == "rocky":
        kex = (*_RHEL_KEX, STRICT_KEX) if build.strict_kex else _RHEL_KEX
        ciphers, macs = _RHEL_CIPHERS, _RHEL_MACS
    else:
        kex, ciphers, macs = _openssh_kex(build.version, build.strict_kex), DEFAULT_CIPHERS, DEFAULT_MACS
    # ssh-rsa (SHA-1 signatures) left the default host-key list in OpenSSH 8.8.
    legacy_rsa = build.version.startswith(("8.2", "8.4"))
    host_keys = (
        "rsa-sha2-512",
        "rsa-sha2-256",
        *(("ssh-rsa",) if legacy_rsa else ()),
        "ecdsa-sha2-nistp256",
        "ssh-ed25519",
    )
    fingerprint = SshFingerprint(
        identification=identification,
        kex_algorithms=kex,
        host_key_algorithms=host_keys,
        ciphers=ciphers,
        macs=macs,
        compression=("none", "zlib@openssh.com"),
    )
    return Template(
        template_id=Protocol.SSH.label,
        protocol=Protocol.SSH,
        product="OpenSSH",
        product_version=build.version,
        os_family=release.name,
        hostname=short,
        banner=identification,
        fingerprint=fingerprint,
    )


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
_MYSQL8_CAPABILITIES = 0xDFFFFFFF & ~CLIENT_SSL
_MARIADB_CAPABILITIES = 0x81FFFFFF & ~CLIENT_SSL & ~CLIENT_LONG_PASSWORD


def _mysql(draw: Draw, release: OsRelease, naming: Naming) -> Template:
    short, _ = _role_host(draw, naming, Protocol.MYSQL)
    version = draw.choice(release.databases)
    mariadb = "MariaDB" in version
    fingerprint = MysqlFingerprint(
        server_version=version,
        mariadb=mariadb,
        protocol_version=10,
        capability_flags=_MARIADB_CAPABILITIES if mariadb else _MYSQL8_CAPABILITIES,
        # Progress reporting, bulk statements, extended type info, metadata cache (10.11 adds the last).
        mariadb_capabilities=(0x1D if "10.11" in version else 0x0D) if mariadb else 0,
        character_set=45 if mariadb else 255,
        status_flags=SERVER_STATUS_AUTOCOMMIT,
        auth_plugin_name="mysql_native_password" if mariadb else "caching_sha2_password",
        first_connection_id=draw.between(8, 4000),
    )
    product, shown = ("MariaDB", version.removeprefix("5.5.5-").split("-")[0]) if mariadb else ("MySQL", version)
    return Template(
        template_id=Protocol.MYSQL.label,
        protocol=Protocol.MYSQL,
        product=product,
        product_version=shown.split("-")[0],
        os_family=release.name,
        hostname=short,
        banner=version,
        fingerprint=fingerprint,
    )


def _redis(installation: Installation, release: OsRelease, naming: Naming, kernel: str) -> Template:
    draw = installation.draw("redis")
    short, _ = _role_host(draw, naming, Protocol.REDIS)
    uptime_before_install = draw.between(3 * 3600, 90 * 86400)
    fingerprint = RedisFingerprint(
        redis_version=release.redis,
        os=f"Linux {kernel} x86_64",
        gcc_version=release.gcc,
        build_id=draw.hex(16),
        run_id=draw.hex(40),
        process_id=draw.between(600, 48000),
        tcp_port=6379,
        started_at=int(installation.created_at.timestamp()) - uptime_before_install,
        requires_auth=draw.chance(0.7),
        keys=draw.between(40, 250_000),
        executable="/usr/bin/redis-server",
        config_file="/etc/redis/redis.conf",
    )
    return Template(
        template_id=Protocol.REDIS.label,
        protocol=Protocol.REDIS,
        product="Redis",
        product_version=release.redis,
        os_family=release.name,
        hostname=short,
        banner=f"redis_version:{release.redis}",
        fingerprint=fingerprint,
    )


def _ftp(draw: Draw, release: OsRelease, naming: Naming) -> Template:
    short, _ = _role_host(draw, naming, Protocol.FTP)
    daemon = "proftpd" if release.proftpd and draw.chance(0.4) else "vsftpd"
    if daemon == "vsftpd":
        greeting, version = f"220 (vsFTPd {release.vsftpd})", release.vsftpd
    else:
        # Debian and Ubuntu ship proftpd.conf with `ServerName "Debian"` (Ubuntu's says Ubuntu).
        label = release.apache_distribution
        greeting, version = f"220 ProFTPD Server ({label}) [{{local_address}}]", release.proftpd
    if daemon == "vsftpd":
        fingerprint = FtpFingerprint(
            daemon=daemon,
            greeting=greeting,
            system_reply="215 UNIX Type: L8",
            user_reply="331 Please specify the password.",
            login_failed_reply="530 Login incorrect.",
            user_first_reply="503 Login with USER first.",
            login_required_reply="530 Please login with USER and PASS.",
            unknown_reply="530 Please login with USER and PASS.",
            goodbye_reply="221 Goodbye.",
            features=("EPRT", "EPSV", "MDTM", "PASV", "REST STREAM", "SIZE", "TVFS"),
            max_login_failures=3,
        )
    else:
        fingerprint = FtpFingerprint(
            daemon=daemon,
            greeting=greeting,
            system_reply="215 UNIX Type: L8",
            user_reply="331 Password required for {user}",
            login_failed_reply="530 Login incorrect.",
            user_first_reply="503 Login with USER first",
            login_required_reply="530 Please login with USER and PASS",
            unknown_reply="500 {command} not understood",
            goodbye_reply="221 Goodbye.",
            features=(
                "LANG en-US*",
                "MDTM",
                "MFMT",
                "TVFS",
                "UTF8",
                "MFF modify;UNIX.group;UNIX.mode;",
                "MLST modify*;perm*;size*;type*;unique*;UNIX.group*;UNIX.mode*;UNIX.owner*;",
                "SITE MKDIR",
                "SITE RMDIR",
                "SITE UTIME",
                "SITE SYMLINK",
                "REST STREAM",
                "SIZE",
            ),
            max_login_failures=draw.choice((3, 3, 5)),
        )
    return Template(
        template_id=Protocol.FTP.label,
        protocol=Protocol.FTP,
        product="vsftpd" if daemon == "vsftpd" else "ProFTPD",
        product_version=version,
        os_family=release.name,
        hostname=short,
        banner=greeting,
        fingerprint=fingerprint,
    )


def _smtp(draw: Draw, release: OsRelease, naming: Naming) -> Template:
    _, fqdn = _role_host(draw, naming, Protocol.SMTP)
    size = draw.choice((10240000, 20480000, 26214400, 52428800, 36700160))
    capabilities = ["PIPELINING", f"SIZE {size}"]
    if draw.chance(0.5):
        capabilities.append("VRFY")
    capabilities += ["ETRN", "STARTTLS", draw.choice(("AUTH PLAIN LOGIN", "AUTH PLAIN", "AUTH LOGIN PLAIN"))]
    capabilities += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
    banner = f"220 {fqdn} ESMTP Postfix{release.postfix_suffix}"
    fingerprint = SmtpFingerprint(hostname=fqdn, banner=banner, ehlo_capabilities=tuple(capabilities))
    return Template(
        template_id=Protocol.SMTP.label,
        protocol=Protocol.SMTP,
        product="Postfix",
        product_version=release.postfix,
        os_family=release.name,
        hostname=fqdn,
        banner=banner,
        fingerprint=fingerprint,
    )
