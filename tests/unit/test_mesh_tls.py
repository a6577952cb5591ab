"""Mutual TLS between services: a client without a certificate from the mesh CA is refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from clients.channel import ChannelOptions, ChannelTls, open_channel
from tests.conftest import StartServer, test_config
from tests.support.certs import ThrowawayCA
from tests.support.echo import echo_mount, echo_pb2, echo_pb2_grpc


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path / "ca")


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    start_server: StartServer, tmp_path: Path, ca: ThrowawayCA
) -> None:
    server_cert = ca.issue("server", server=True)
    config = test_config(
        tmp_path,
        tls__cert_file=str(server_cert.cert),
        tls__key_file=str(server_cert.key),
        tls__ca_file=str(ca.cert),
        tls__require_client_cert=True,
    )
    running = await start_server(lambda rt: [echo_mount(rt)], config)
    target = f"localhost:{running.server.port}"
    request = echo_pb2.EchoRequest(text="over tls")

    client_cert = ca.issue("client", server=False)
    trusted = ChannelTls(ca_file=str(ca.cert), cert_file=str(client_cert.cert), key_file=str(client_cert.key))
    async with open_channel(target, ChannelOptions(tls=trusted, retry=None)) as channel:
        assert (await echo_pb2_grpc.EchoServiceStub(channel).Echo(request, timeout=5)).text == "over tls"

    anonymous = ChannelTls(ca_file=str(ca.cert))
    async with open_channel(target, ChannelOptions(tls=anonymous, retry=None)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo_pb2_grpc.EchoServiceStub(channel).Echo(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    stranger_ca = ThrowawayCA(tmp_path / "other-ca", name="Someone Else")
    forged = stranger_ca.issue("client", server=False)
    impostor = ChannelTls(ca_file=str(ca.cert), cert_file=str(forged.cert), key_file=str(forged.key))
    async with open_channel(target, ChannelOptions(tls=impostor, retry=None)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo_pb2_grpc.EchoServiceStub(channel).Echo(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async with grpc.aio.insecure_channel(target) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError):
            await echo_pb2_grpc.EchoServiceStub(plaintext).Echo(request, timeout=5)
