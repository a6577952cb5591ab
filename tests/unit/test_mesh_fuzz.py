"""The fuzz harness itself: it passes a robust service, reports per method how many calls reached the
logic, and catches a crash behind strict validation and a stream that never answers."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from servers.mesh import errors
from servers.mesh.server import Mount
from tests.conftest import StartServer, test_config
from tests.support.echo import EchoServicer, echo_mount, echo_pb2, echo_pb2_grpc
from tests.support.fuzz import fuzz_service, mutate_one_field, plausible_request

ECHO = echo_pb2.DESCRIPTOR.services_by_name["EchoService"]
POLITE = {"Echo": [echo_pb2.EchoRequest(text="hello")], "Repeat": [echo_pb2.RepeatRequest(text="hi", count=3)]}


def mounts_of(servicer_class: type[EchoServicer]) -> Any:
    def mounts(runtime: Any) -> list[Mount]:
        return [Mount(ECHO, servicer_class(runtime), echo_pb2_grpc.add_EchoServiceServicer_to_server)]

    return mounts


async def test_echo_service_survives_the_harness_and_most_calls_reach_its_logic(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await start_server(lambda rt: [echo_mount(rt)], test_config(tmp_path))
    # Relay needs a peer.
    report = await fuzz_service(running.channel, ECHO, skip=["Relay"], rounds=10, examples=POLITE)
    report.assert_clean()
    report.assert_reaches_logic(min_share=0.4)
    assert report.calls > 50
    assert report.codes["Echo"]["INVALID_ARGUMENT"] > 0, "malformed bytes and bad fields were refused"
    assert report.methods["Echo"].reached < report.methods["Echo"].sent
    assert "Echo" in report.table() and "reached" in report.table()


def test_a_mutated_request_differs_from_its_base_in_exactly_one_field() -> None:
    rng = random.Random(7)
    base = echo_pb2.EchoRequest(text="hello", sleep_seconds=0.0, fail_with="", number=4, request_id="r")
    for _ in range(200):
        name, mutated = mutate_one_field(base, rng)
        changed = [f.name for f in base.DESCRIPTOR.fields if getattr(base, f.name) != getattr(mutated, f.name)]
        assert len(changed) <= 1 and (not changed or changed[0] in name), (name, changed)


def test_a_plausible_request_fills_every_field_from_the_values_or_its_type() -> None:
    built = plausible_request(echo_pb2.EchoRequest.DESCRIPTOR, {"text": "hi", "number": lambda: 42})
    assert (built.text, built.number, built.sleep_seconds, built.request_id) == ("hi", 42, 0.5, "")


class Fragile(EchoServicer):
    async def Echo(self, request: echo_pb2.EchoRequest, context: object) -> echo_pb2.EchoResponse:
        return echo_pb2.EchoResponse(text=str(100 // len(request.text)))  # ZeroDivisionError on ""


async def test_harness_reports_an_unguarded_handler(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(mounts_of(Fragile), test_config(tmp_path))
    report = await fuzz_service(running.channel, ECHO, skip=["Relay"], rounds=5)
    assert any("Echo [empty] -> INTERNAL" in f for f in report.failures)
    assert grpc.StatusCode.INTERNAL in {grpc.StatusCode[c] for c in report.codes["Echo"]}


class CrashesPastStrictValidation(EchoServicer):
    """Refuses every request but a polite one, and crashes on the polite ones: a bug only valid
    requests can find (hostile values alone all stop at validation)."""

    async def Echo(self, request: echo_pb2.EchoRequest, context: object) -> echo_pb2.EchoResponse:
        if not request.text.isalpha() or not request.text.islower() or len(request.text) > 20:
            raise errors.InvalidArgument("text", "must be a short lowercase word")
        raise RuntimeError("broken past validation")


async def test_harness_finds_a_crash_that_only_valid_requests_reach(start_server: StartServer, tmp_path: Path) -> None:
    running = await start_server(mounts_of(CrashesPastStrictValidation), test_config(tmp_path))
    report = await fuzz_service(running.channel, ECHO, skip=["Relay"], rounds=10, examples=POLITE)
    assert any(f.startswith("Echo [valid-") and "INTERNAL" in f for f in report.failures), report.failures
    with pytest.raises(AssertionError):
        report.assert_clean()


class SilentStream(EchoServicer):
    async def Repeat(self, request: Any, context: Any) -> Any:
        await asyncio.Event().wait()
        yield echo_pb2.EchoResponse(text="never")


async def test_a_stream_that_never_answers_does_not_count_as_reaching_anything(
    start_server: StartServer, tmp_path: Path
) -> None:
    running = await start_server(mounts_of(SilentStream), test_config(tmp_path))
    report = await fuzz_service(running.channel, ECHO, skip=["Relay", "Echo", "Ping", "Closed"], rounds=4)
    repeat = report.methods["Repeat"]
    assert repeat.codes["DEADLINE_EXCEEDED"] > 0 and repeat.codes["OK"] == 0
    with pytest.raises(AssertionError, match="valid examples refused"):
        report.assert_reaches_logic()
