"""Live decoys: real clients connect over loopback, get a consistent fingerprint, and are recorded."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ftplib
import http.client
import smtplib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from servers.deception.alerts import AlertBook
from servers.deception.decoys import DecoyConfig, DecoyFleet, DecoyLimits, default_decoy_configs
from servers.deception.domain import AlertKind, Interaction, Protocol, ReconStage
from servers.deception.fingerprints import (
    FtpFingerprint,
    HttpFingerprint,
    MysqlFingerprint,
    RedisFingerprint,
    SmtpFingerprint,
    SshFingerprint,
)
from servers.deception.installation import Installation
from servers.deception.protocols.framing import WireError
from servers.deception.protocols.mysql import mysql_login_packet, parse_mysql_handshake, parse_mysql_packet
from servers.deception.protocols.ssh import parse_kexinit, parse_ssh_binary_packet
from servers.deception.sessions import SessionBook
from servers.deception.templates import TemplateCatalog
from servers.mesh.errors import AlreadyExists, InvalidArgument
from tests.support.sockets import read_line

CREATED = datetime(2024, 3, 1, tzinfo=UTC)
HOST = "127.0.0.1"


def seed_where(condition: Callable[[TemplateCatalog], bool]) -> int:
    """The first installation seed whose templates satisfy `condition` (deterministic)."""
    return next(s for s in range(1, 500) if condition(TemplateCatalog(Installation(s, CREATED))))


def redis_fp(c: TemplateCatalog) -> RedisFingerprint:
    fingerprint = c.for_protocol(Protocol.REDIS).fingerprint
    assert isinstance(fingerprint, RedisFingerprint)
    return fingerprint


def http_fp(c: TemplateCatalog) -> HttpFingerprint:
    fingerprint = c.for_protocol(Protocol.HTTP).fingerprint
    assert isinstance(fingerprint, HttpFingerprint)
    return fingerprint


@dataclass
class Recorder:
    """What the service layer does with interactions: session timeline plus deduplicated alerts."""

    sessions: SessionBook = field(default_factory=SessionBook)
    alerts: AlertBook = field(default_factory=AlertBook)
    interactions: list[Interaction] = field(default_factory=list)

    def __call__(self, interaction: Interaction) -> None:
        self.interactions.append(interaction)
        event = self.sessions.record_interaction(interaction)
        self.alerts.observe_interaction(interaction, event.session_id)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Interaction]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.interactions) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{len(self.interactions)} interactions recorded, expected {count}")
            await asyncio.sleep(0.01)
        return self.interactions


@dataclass
class Deployment:
    catalog: TemplateCatalog
    fleet: DecoyFleet
    recorder: Recorder

    def port(self, protocol: Protocol) -> int:
        return self.fleet.get(f"{protocol.label}-1").port

    def fingerprint(self, protocol: Protocol) -> object:
        return self.catalog.for_protocol(protocol).fingerprint


async def deploy(seed: int, limits: DecoyLimits | None = None) -> Deployment:
    catalog = TemplateCatalog(Installation(seed, CREATED))
    recorder = Recorder()
    fleet = DecoyFleet(catalog, recorder, limits=limits)
    await fleet.start(default_decoy_configs())
    return Deployment(catalog, fleet, recorder)


@pytest.fixture
async def decoys() -> AsyncIterator[Deployment]:
    deployment = await deploy(seed_where(lambda c: redis_fp(c).requires_auth))
    yield deployment
    await deployment.fleet.stop()


def blocking_socket(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=5)
    return sock


def read_reply(sock: socket.socket) -> list[bytes]:
    """One FTP/SMTP reply, following `NNN-` continuation lines."""
    lines = [read_line(sock)]
    while lines[-1][3:4] == b"-" or (lines[-1][:1] == b" "):
        lines.append(read_line(sock))
    return lines


# --- HTTP -------------------------------------------------------------------------------------


def http_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


async def test_http_decoy_answers_a_real_request_with_the_templates_headers_in_order(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.HTTP)
    assert isinstance(fp, HttpFingerprint)

    status, headers, body = await asyncio.to_thread(
        http_get, decoys.port(Protocol.HTTP), "/", {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"}
    )

    names = [name for name, _ in headers]
    assert status == 200
    assert dict(headers)["Server"] == fp.server_header
    assert names == [n for n in fp.header_order if n in names], "headers leave in the product's order"
    assert email.utils.parsedate_to_datetime(dict(headers)["Date"]).tzinfo is not None
    assert dict(headers)["Date"].endswith(" GMT")
    assert dict(headers)["Set-Cookie"].startswith(fp.session_cookie + "=")
    assert fp.organisation.encode() in body and b'name="password"' in body
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.BANNER_GRAB
    assert interaction.client_banner.startswith("Mozilla/5.0")
    assert interaction.commands == ("GET / HTTP/1.1",)


async def test_http_path_traversal_is_an_exploit_attempt_and_gets_the_products_404(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.HTTP)
    assert isinstance(fp, HttpFingerprint)

    status, _, body = await asyncio.to_thread(http_get, decoys.port(Protocol.HTTP), "/../../etc/passwd", {})

    assert status == 404
    assert fp.server_header.encode() in body
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.EXPLOIT_ATTEMPT
    assert "path_traversal" in interaction.indicators
    (session,) = decoys.recorder.sessions.all_sessions()
    assert session.stage is ReconStage.EXPLOIT_ATTEMPT
    timeline = decoys.recorder.sessions.events(session.session_id)
    assert timeline[0].interaction == interaction and "path_traversal" in timeline[0].summary


async def test_http_login_form_posts_are_login_attempts_with_the_credentials(decoys: Deployment) -> None:
    def post() -> int:
        connection = http.client.HTTPConnection(HOST, decoys.port(Protocol.HTTP), timeout=5)
        body = "username=jdoe&password=Winter2024%21&csrf_token=x"
        connection.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        assert b"Invalid username or password." in response.read()
        connection.close()
        return response.status

    assert await asyncio.to_thread(post) == 200
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.LOGIN_ATTEMPT
    assert [(c.username, c.secret) for c in interaction.credentials] == [("jdoe", "Winter2024!")]


# --- SSH --------------------------------------------------------------------------------------


async def test_ssh_decoy_sends_its_identification_then_a_kexinit_that_parses(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.SSH)
    assert isinstance(fp, SshFingerprint)

    def exchange() -> tuple[bytes, bytes]:
        with blocking_socket(decoys.port(Protocol.SSH)) as sock:
            identification = read_line(sock)
            sock.sendall(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n")
            data = b""
            while True:
                try:
                    payload, consumed = parse_ssh_binary_packet(data)
                    assert consumed % 8 == 0, "unencrypted packets are padded to 8-byte blocks"
                    return identification, payload
                except WireError:
                    chunk = sock.recv(4096)
                    assert chunk, "connection closed before KEXINIT"
                    data += chunk

    identification, payload = await asyncio.to_thread(exchange)

    assert identification == fp.identification.encode() + b"\r\n"
    kexinit = parse_kexinit(payload)
    assert kexinit.kex_algorithms == fp.kex_algorithms
    assert kexinit.host_key_algorithms == fp.host_key_algorithms
    assert kexinit.ciphers_client_to_server == kexinit.ciphers_server_to_client == fp.ciphers
    assert kexinit.macs_client_to_server == fp.macs and len(kexinit.cookie) == 16
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.BANNER_GRAB
    assert interaction.client_banner == "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13"


# --- MySQL ------------------------------------------------------------------------------------


async def test_mysql_handshake_is_byte_correct_and_a_login_is_denied_and_recorded(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.MYSQL)
    assert isinstance(fp, MysqlFingerprint)

    def login() -> tuple[bytes, bytes]:
        with blocking_socket(decoys.port(Protocol.MYSQL)) as sock:
            header = sock.recv(4, socket.MSG_WAITALL)
            length = int.from_bytes(header[:3], "little")
            handshake = header + sock.recv(length, socket.MSG_WAITALL)
            sock.sendall(mysql_login_packet("root", b"", attributes={"_client_name": "libmariadb"}))
            answer = sock.recv(4096)
            return handshake, answer

    handshake, answer = await asyncio.to_thread(login)

    sequence, payload, consumed = parse_mysql_packet(handshake)
    assert sequence == 0 and consumed == len(handshake)
    # Field by field, as the client library reads it.
    assert payload[0] == 10
    version_end = payload.index(b"\x00", 1)
    assert payload[1:version_end].decode() == fp.server_version
    connection_id = struct.unpack_from("<I", payload, version_end + 1)[0]
    assert connection_id == fp.first_connection_id
    parsed = parse_mysql_handshake(payload)
    assert parsed.capability_flags == fp.capability_flags and parsed.character_set == fp.character_set
    assert parsed.status_flags == fp.status_flags and parsed.auth_plugin_name == fp.auth_plugin_name
    assert len(parsed.scramble) == 20 and b"\x00" not in parsed.scramble
    assert payload.endswith(fp.auth_plugin_name.encode() + b"\x00")

    error_sequence, error, _ = parse_mysql_packet(answer)
    assert error_sequence == 2 and error[0] == 0xFF
    assert struct.unpack_from("<H", error, 1)[0] == 1045 and error[3:9] == b"#28000"
    assert error[9:].decode() == "Access denied for user 'root'@'localhost' (using password: NO)"
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.LOGIN_ATTEMPT
    assert interaction.credentials[0].username == "root" and interaction.client_banner == "libmariadb"


async def test_mysql_connection_ids_count_up_like_a_real_server(decoys: Deployment) -> None:
    def connection_id() -> int:
        with blocking_socket(decoys.port(Protocol.MYSQL)) as sock:
            data = sock.recv(4096)
        return parse_mysql_handshake(parse_mysql_packet(data)[1]).connection_id

    first, second = await asyncio.to_thread(connection_id), await asyncio.to_thread(connection_id)
    assert second == first + 1


# --- Redis ------------------------------------------------------------------------------------


def redis_exchange(port: int, request: bytes, replies: int) -> bytes:
    with blocking_socket(port) as sock:
        sock.sendall(request)
        data = b""
        while data.count(b"\r\n") < replies:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


async def test_redis_that_requires_a_password_refuses_and_records_auth(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.REDIS)
    assert isinstance(fp, RedisFingerprint) and fp.requires_auth
    request = b"PING\r\n*2\r\n$4\r\nAUTH\r\n$9\r\nredis@123\r\n*1\r\n$4\r\nINFO\r\n"

    answer = await asyncio.to_thread(redis_exchange, decoys.port(Protocol.REDIS), request, 3)

    assert answer.startswith(b"-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair")
    assert answer.endswith(b"-NOAUTH Authentication required.\r\n")
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.LOGIN_ATTEMPT
    assert interaction.credentials[0].secret == "redis@123" and interaction.commands == ("PING", "AUTH", "INFO")


async def test_open_redis_answers_info_with_its_consistent_version_and_os() -> None:
    deployment = await deploy(seed_where(lambda c: not redis_fp(c).requires_auth))
    try:
        fp = deployment.fingerprint(Protocol.REDIS)
        assert isinstance(fp, RedisFingerprint)
        answer = await asyncio.to_thread(redis_exchange, deployment.port(Protocol.REDIS), b"PING\r\nINFO\r\n", 30)
        assert answer.startswith(b"+PONG\r\n$")
        info = answer.split(b"\r\n", 2)[2].decode()
        assert f"redis_version:{fp.redis_version}" in info and f"os:{fp.os}" in info
        assert f"run_id:{fp.run_id}" in info and f"gcc_version:{fp.gcc_version}" in info
        interaction = (await deployment.recorder.wait_for(1))[0]
        assert interaction.stage is ReconStage.BANNER_GRAB
    finally:
        await deployment.fleet.stop()


def redis_bulk_replies(port: int, request: bytes, replies: int) -> list[bytes]:
    """The bulk strings answering `replies` commands, each read to its declared length."""
    with blocking_socket(port) as sock:
        sock.sendall(request)
        data, bulks = b"", []
        while len(bulks) < replies:
            header_end = data.find(b"\r\n")
            if header_end >= 0 and data.startswith(b"$"):
                end = header_end + 2 + int(data[1:header_end])
                if len(data) >= end + 2:
                    bulks.append(data[header_end + 2 : end])
                    data = data[end + 2 :]
                    continue
            chunk = sock.recv(65536)
            assert chunk, (bulks, data)
            data += chunk
        return bulks


async def test_redis_info_with_a_section_shows_only_that_section_and_the_port_it_listens_on() -> None:
    deployment = await deploy(seed_where(lambda c: not redis_fp(c).requires_auth))
    try:
        port = deployment.port(Protocol.REDIS)
        request = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\nINFO KEYSPACE\r\nINFO nosuch\r\nINFO\r\nINFO all\r\n"
        server, keyspace, unknown, everything, all_ = await asyncio.to_thread(redis_bulk_replies, port, request, 5)

        sections = [line for line in server.decode().split("\r\n") if line.startswith("#")]
        assert sections == ["# Server"] and server.endswith(b"\r\n")
        assert f"tcp_port:{port}\r\n".encode() in server
        assert keyspace.startswith(b"# Keyspace\r\ndb0:keys=") and b"# Server" not in keyspace
        assert unknown == b""
        assert everything == all_ and everything.startswith(server + b"\r\n# Clients\r\n")
        assert everything.count(b"\r\n# ") == 6
    finally:
        await deployment.fleet.stop()


async def test_redis_config_set_dir_in_resp_framing_is_an_exploit_attempt(decoys: Deployment) -> None:
    request = b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$3\r\ndir\r\n$15\r\n/var/spool/cron\r\n"
    await asyncio.to_thread(redis_exchange, decoys.port(Protocol.REDIS), request, 1)
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.EXPLOIT_ATTEMPT and "redis_rce" in interaction.indicators


# --- FTP and SMTP -----------------------------------------------------------------------------


async def test_ftp_decoy_greets_and_refuses_a_login_in_its_daemons_words(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.FTP)
    assert isinstance(fp, FtpFingerprint)

    def session() -> list[list[bytes]]:
        with blocking_socket(decoys.port(Protocol.FTP)) as sock:
            replies = [read_reply(sock)]
            for command in (b"USER backup", b"PASS backup2023", b"SYST", b"QUIT"):
                sock.sendall(command + b"\r\n")
                replies.append(read_reply(sock))
            return replies

    greeting, user, password, system, goodbye = await asyncio.to_thread(session)

    assert greeting == [fp.greeting.format(local_address=f"::ffff:{HOST}").encode() + b"\r\n"]
    assert user == [fp.user_reply.format(user="backup").encode() + b"\r\n"]
    assert password == [b"530 Login incorrect.\r\n"]
    assert system == [b"215 UNIX Type: L8\r\n"] and goodbye == [b"221 Goodbye.\r\n"]
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.LOGIN_ATTEMPT
    assert [(c.username, c.secret) for c in interaction.credentials] == [("backup", "backup2023")]
    assert "PASS ****" in interaction.commands, "passwords stay out of the command log"


async def test_smtp_decoy_announces_its_capabilities_and_records_auth_login(decoys: Deployment) -> None:
    fp = decoys.fingerprint(Protocol.SMTP)
    assert isinstance(fp, SmtpFingerprint)

    def session() -> tuple[list[bytes], list[bytes], list[bytes]]:
        with blocking_socket(decoys.port(Protocol.SMTP)) as sock:
            banner = read_reply(sock)
            sock.sendall(b"EHLO scanner.client.net\r\n")
            ehlo = read_reply(sock)
            sock.sendall(b"AUTH LOGIN\r\n")
            prompts = [read_reply(sock)[0]]
            sock.sendall(base64.b64encode(b"postmaster") + b"\r\n")
            prompts.append(read_reply(sock)[0])
            sock.sendall(base64.b64encode(b"letmein") + b"\r\n")
            prompts.append(read_reply(sock)[0])
            sock.sendall(b"QUIT\r\n")
            read_reply(sock)
            return banner, ehlo, prompts

    banner, ehlo, prompts = await asyncio.to_thread(session)

    assert banner == [fp.banner.encode() + b"\r\n"]
    assert [line[4:-2].decode() for line in ehlo] == [fp.hostname, *fp.ehlo_capabilities]
    assert prompts == [
        b"334 VXNlcm5hbWU6\r\n",
        b"334 UGFzc3dvcmQ6\r\n",
        b"535 5.7.8 Error: authentication failed: authentication failure\r\n",
    ]
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.LOGIN_ATTEMPT
    assert interaction.client_banner == "scanner.client.net"
    assert [(c.username, c.secret) for c in interaction.credentials] == [("postmaster", "letmein")]


# --- Stages, fingerprints, robustness ---------------------------------------------------------


@pytest.mark.parametrize("protocol", list(Protocol))
async def test_connect_and_close_without_data_is_a_scan(decoys: Deployment, protocol: Protocol) -> None:
    _, writer = await asyncio.open_connection(HOST, decoys.port(protocol))
    writer.close()
    await writer.wait_closed()
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.SCAN and interaction.bytes_received == 0
    assert interaction.decoy_id == f"{protocol.label}-1" and interaction.source_address == HOST


@pytest.mark.parametrize(
    ("protocol", "probe"),
    [(Protocol.FTP, b"QUIT\r\n"), (Protocol.SMTP, b"QUIT\r\n"), (Protocol.SSH, b"SSH-2.0-Nmap-SSH2-Hostkey\r\n")],
)
async def test_reading_the_banner_and_answering_is_a_banner_grab(
    decoys: Deployment, protocol: Protocol, probe: bytes
) -> None:
    reader, writer = await asyncio.open_connection(HOST, decoys.port(protocol))
    banner = await asyncio.wait_for(reader.readline(), 5)
    assert banner.startswith((b"220 ", b"SSH-2.0-OpenSSH_"))
    writer.write(probe)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    interaction = (await decoys.recorder.wait_for(1))[0]
    assert interaction.stage is ReconStage.BANNER_GRAB


async def test_the_same_seed_presents_the_same_fingerprint_and_another_seed_another() -> None:
    async def banners(seed: int) -> tuple[bytes, ...]:
        deployment = await deploy(seed)
        try:
            collected = []
            for protocol in (Protocol.SSH, Protocol.FTP, Protocol.SMTP):
                reader, writer = await asyncio.open_connection(HOST, deployment.port(protocol))
                collected.append(await asyncio.wait_for(reader.readline(), 5))
                writer.close()
            reader, writer = await asyncio.open_connection(HOST, deployment.port(Protocol.MYSQL))
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
            collected.append(parse_mysql_handshake(payload).server_version.encode())
            writer.close()
            return tuple(collected)
        finally:
            await deployment.fleet.stop()

    first, restarted, other = await banners(101), await banners(101), await banners(202)
    assert first == restarted
    assert first != other
    assert first[0].startswith(b"SSH-2.0-OpenSSH_")


@pytest.mark.parametrize("protocol", list(Protocol))
async def test_garbage_never_crashes_a_decoy(decoys: Deployment, protocol: Protocol) -> None:
    garbage = bytes(range(256)) * 8 + b"\r\n\r\n" + b"\xff" * 512 + b"\n"
    reader, writer = await asyncio.open_connection(HOST, decoys.port(protocol))
    writer.write(garbage)
    await writer.drain()
    await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    await decoys.recorder.wait_for(1)

    _, writer = await asyncio.open_connection(HOST, decoys.port(protocol))  # still listening
    writer.close()
    interactions = await decoys.recorder.wait_for(2)
    assert interactions[0].bytes_received > 0 and interactions[0].stage is not ReconStage.SCAN
    assert len(interactions[0].received_sample) <= DecoyLimits().sample_bytes
    assert decoys.fleet.get(f"{protocol.label}-1").listening


async def test_silent_clients_time_out_and_floods_are_capped() -> None:
    deployment = await deploy(5, DecoyLimits(read_timeout=0.2, max_bytes=4096, sample_bytes=64))
    try:
        reader, writer = await asyncio.open_connection(HOST, deployment.port(Protocol.REDIS))
        assert await asyncio.wait_for(reader.read(100), 3) == b"", "the decoy hung up on a silent client"
        writer.close()
        reader, writer = await asyncio.open_connection(HOST, deployment.port(Protocol.HTTP))
        writer.write(b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(65536), 3)
        writer.close()
        silent, flood = await deployment.recorder.wait_for(2)
        assert silent.stage is ReconStage.SCAN
        assert flood.bytes_received <= 4096 and len(flood.received_sample) == 64
    finally:
        await deployment.fleet.stop()


async def test_a_thousand_connections_from_one_source_are_one_alert() -> None:
    deployment = await deploy(9)
    try:
        ports = [deployment.port(p) for p in Protocol]

        async def touch(i: int) -> None:
            _, writer = await asyncio.open_connection(HOST, ports[i % len(ports)])
            writer.close()
            await writer.wait_closed()

        for batch in range(20):
            await asyncio.gather(*(touch(batch * 50 + i) for i in range(50)))
        await deployment.recorder.wait_for(1000, timeout=20)

        alerts, _ = deployment.recorder.alerts.list_alerts(page_size=100)
        assert len(alerts) == 1
        alert = alerts[0]
        assert alert.count == 1000 and alert.kind is AlertKind.DECOY_INTERACTION
        assert alert.source_address == HOST and alert.stage is ReconStage.SCAN
        assert sorted(alert.decoy_ids) == sorted(f"{p.label}-1" for p in Protocol)
        sessions = deployment.recorder.sessions.all_sessions()
        assert len(sessions) == 1 and sessions[0].event_count == 1000
    finally:
        await deployment.fleet.stop()


async def test_fleet_configuration_is_validated() -> None:
    with pytest.raises(InvalidArgument) as port:
        DecoyConfig("ssh-1", Protocol.SSH, port=70000)
    assert port.value.metadata["field"] == "port"
    with pytest.raises(InvalidArgument) as address:
        DecoyConfig("ssh-1", Protocol.SSH, bind_address="localhost.invalid")
    assert address.value.metadata["field"] == "bind_address"

    fleet = DecoyFleet(TemplateCatalog(Installation(1, CREATED)), lambda _: None)
    with pytest.raises(AlreadyExists):
        await fleet.start([DecoyConfig("a", Protocol.SSH), DecoyConfig("a", Protocol.FTP)])
    assert fleet.decoys() == ()


async def test_stdlib_ftp_and_smtp_clients_get_the_refusals_real_servers_give(decoys: Deployment) -> None:
    def clients() -> tuple[str, int, int]:
        ftp = ftplib.FTP()
        ftp.connect(HOST, decoys.port(Protocol.FTP), timeout=5)
        with pytest.raises(ftplib.error_perm) as refused:
            ftp.login("deploy", "Deploy#2024")
        ftp.close()
        with smtplib.SMTP(HOST, decoys.port(Protocol.SMTP), timeout=5) as smtp:
            smtp.ehlo("client.example.org")
            with pytest.raises(smtplib.SMTPAuthenticationError) as denied:
                smtp.login("info", "info123")
            with pytest.raises(smtplib.SMTPRecipientsRefused) as relay:
                smtp.sendmail("a@client.example.org", ["x@elsewhere.org"], "hello")
        return str(refused.value), denied.value.smtp_code, relay.value.recipients["x@elsewhere.org"][0]

    ftp_error, auth_code, relay_code = await asyncio.to_thread(clients)

    assert ftp_error == "530 Login incorrect." and auth_code == 535 and relay_code == 554
    interactions = await decoys.recorder.wait_for(2)
    assert {i.stage for i in interactions} == {ReconStage.LOGIN_ATTEMPT}
    assert ("deploy", "Deploy#2024") in [(c.username, c.secret) for i in interactions for c in i.credentials]
