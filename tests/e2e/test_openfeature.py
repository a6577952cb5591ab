"""OpenFeature's upstream flagd provider against the deployment server: in RPC mode (flagd's
evaluation contract) and in-process mode (flagd's sync contract, evaluated by the provider's own
engine), the same answers as our own ResolveBoolean for 20,000 targeting keys, and a flag change
reaching the provider through its event stream."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from clients.deployment import FlagClient
from shieldx.deployment.v1 import flags_pb2 as pb
from tests.support.processes import ROOT, ServerProcess

pytestmark = pytest.mark.slow

FLAG = "new-checkout"
KEYS = [f"user-{i}" for i in range(20_000)]


def definition(on_share: int) -> str:
    """A boolean flag: on for e-mails ending in 7@example.com, else a fractional split."""
    return json.dumps(
        {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {
                "if": [
                    {"ends_with": [{"var": "email"}, "7@example.com"]},
                    "on",
                    {"fractional": [["on", on_share], ["off", 100 - on_share]]},
                ]
            },
        }
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess("servers.deployment", tmp_path_factory.mktemp("openfeature")).start()
    try:
        yield server
    finally:
        server.stop()


async def put_flag(address: str, on_share: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await FlagClient(channel).put_flag(pb.PutFlagRequest(flag_key=FLAG, definition_json=definition(on_share)))


async def our_answers(address: str, keys: list[str]) -> dict[str, bool]:
    async with grpc.aio.insecure_channel(address) as channel:
        client = FlagClient(channel)
        answers: dict[str, bool] = {}
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            replies = await asyncio.gather(
                *(
                    client.resolve_boolean(pb.ResolveBooleanRequest(flag_key=FLAG, context=context(key)), timeout=30)
                    for key in batch
                )
            )
            answers.update((key, reply.value) for key, reply in zip(batch, replies, strict=True))
        return answers


def context(key: str) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update({"targetingKey": key, "email": f"{key}@example.com"})
    return value


def application(address: str, mode: str, keys_file: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.openfeature_app", address, mode, FLAG, str(keys_file), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["rpc", "in-process"])
async def test_the_flagd_provider_agrees_with_resolve_boolean_on_every_key(
    deployment: ServerProcess, tmp_path: Path, mode: str
) -> None:
    await put_flag(deployment.address, 30)
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("\n".join(KEYS))
    app = application(deployment.address, mode, keys_file)
    ours = await our_answers(deployment.address, KEYS)
    out, err = await asyncio.to_thread(app.communicate, timeout=600)
    assert app.returncode == 0, err[-3000:]
    theirs = json.loads(out.strip().splitlines()[-1])["values"]

    disagreements = [key for key in KEYS if theirs[key] != ours[key]]
    assert not disagreements, f"{len(disagreements)} of {len(KEYS)} disagree, e.g. {disagreements[:5]}"
    share = sum(ours.values()) / len(KEYS)
    assert 0.33 < share < 0.41, "30 % by split plus a tenth of the rest by e-mail"
    print(f"{mode}: {len(KEYS)} keys compared, 0 disagreements, {share:.3f} on")


@pytest.mark.parametrize("mode", ["rpc", "in-process"])
async def test_a_flag_change_reaches_the_provider_through_its_stream(
    deployment: ServerProcess, tmp_path: Path, mode: str
) -> None:
    await put_flag(deployment.address, 30)
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("user-1\n")  # off at 30 % (and not an e-mail ending in 7)
    app = application(deployment.address, mode, keys_file, "--watch")
    assert app.stdout is not None
    ready = await asyncio.to_thread(app.stdout.readline)
    assert json.loads(ready) == {"ready": True}, app.stderr.read() if app.stderr else ""
    await put_flag(deployment.address, 100)
    out, err = await asyncio.to_thread(app.communicate, timeout=60)
    assert app.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["values"] == {"user-1": False}
    assert result["after"] is True, "the provider evaluates the new definition after the event"
    if mode == "rpc":
        assert FLAG in result["changed"], "the event names the changed flag"
