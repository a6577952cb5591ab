"""Decoy templates: one self-consistent service fingerprint per protocol, drawn per installation.

An installation first draws an operating system release; every product version, kernel,
compiler, distribution suffix and reply text is then taken from what that release really
ships, so an SSH banner from Ubuntu 22.04 is never next to a MariaDB build from Debian. Host
names, the organisation's domain, run ids and counters come from the installation seed, so two
installations do not look alike and nothing is a stock value an attacker can search for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from servers.deception.domain import Protocol
from servers.deception.fingerprints import (
    MARIADB_CAPABILITIES,
    MYSQL8_CAPABILITIES,
    SERVER_STATUS_AUTOCOMMIT,
    Fingerprint,
    FtpFingerprint,
    HttpFingerprint,
    MysqlFingerprint,
    RedisFingerprint,
    SmtpFingerprint,
    SshFingerprint,
)
from servers.deception.installation import Draw, Installation
from servers.deception.releases import (
    DEFAULT_CIPHERS,
    DEFAULT_MACS,
    OS_RELEASES,
    RHEL_CIPHERS,
    RHEL_KEX,
    RHEL_MACS,
    STRICT_KEX,
    OsRelease,
    openssh_kex,
)
from servers.mesh.errors import InvalidArgument, NotFound

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

F = TypeVar("F")


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

    def fingerprint_as(self, kind: type[F]) -> F:
        """The fingerprint, checked to be of `kind` (a dialogue asking for its own protocol's)."""
        if not isinstance(self.fingerprint, kind):
            raise TypeError(f"template {self.template_id} has no {kind.__name__}")
        return self.fingerprint


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
        kex = (*RHEL_KEX, STRICT_KEX) if build.strict_kex else RHEL_KEX
        ciphers, macs = RHEL_CIPHERS, RHEL_MACS
    else:
        kex, ciphers, macs = openssh_kex(build.version, build.strict_kex), DEFAULT_CIPHERS, DEFAULT_MACS
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


def _mysql(draw: Draw, release: OsRelease, naming: Naming) -> Template:
    short, _ = _role_host(draw, naming, Protocol.MYSQL)
    version = draw.choice(release.databases)
    mariadb = "MariaDB" in version
    fingerprint = MysqlFingerprint(
        server_version=version,
        mariadb=mariadb,
        protocol_version=10,
        capability_flags=MARIADB_CAPABILITIES if mariadb else MYSQL8_CAPABILITIES,
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
