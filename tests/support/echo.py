"""The test-only Echo service: compiled from echo.proto at test time, served on the real runtime."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from servers.mesh import errors
from servers.mesh.logs import current_trace_ids
from servers.mesh.server import Mount, Runtime, Service

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / ".shieldx" / "test-protos"


def compile_echo() -> tuple[ModuleType, ModuleType]:
    """Compile echo.proto (once per checkout) and import its modules."""
    target = BUILD / "meshtest" / "v1"
    source = Path(__file__).with_name("echo.proto")
    stamp = target / "echo_pb2.py"
    if not stamp.exists() or stamp.stat().st_mtime < source.stat().st_mtime:
        staging = BUILD / "meshtest" / "v1"
        staging.mkdir(parents=True, exist_ok=True)
        well_known = resources.files("grpc_tools") / "_proto"
        protos = BUILD / "src" / "meshtest" / "v1"
        protos.mkdir(parents=True, exist_ok=True)
        (protos / "echo.proto").write_text(source.read_text())
        subprocess.run(
            [
                sys.executable, "-m", "grpc_tools.protoc",
                f"-I{BUILD / 'src'}", f"-I{ROOT / 'protos'}", f"-I{well_known}",
                f"--python_out={BUILD}", f"--grpc_python_out={BUILD}", "meshtest/v1/echo.proto",
            ],
            check=True,
        )  # fmt: skip
        for package in (BUILD / "meshtest", staging):
            (package / "__init__.py").touch()
    if str(BUILD) not in sys.path:
        sys.path.insert(0, str(BUILD))
    return importlib.import_module("meshtest.v1.echo_pb2"), importlib.import_module("meshtest.v1.echo_pb2_grpc")


echo_pb2, echo_pb2_grpc = compile_echo()


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):  # type: ignore[misc,name-defined]
    """Echo, with knobs to be slow, fail, or call a peer."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Echo(self, request: Any, context: Any) -> Any:
        if not 0 <= request.sleep_seconds <= 5:
            raise errors.InvalidArgument("sleep_seconds", "must be between 0 and 5")
        if request.sleep_seconds > 0:
            await asyncio.sleep(request.sleep_seconds)
        if request.fail_with == "crash":
            raise RuntimeError("secret internal detail")
        if request.fail_with == "InvalidArgument":
            raise errors.InvalidArgument("text", "must be polite")
        if request.fail_with == "NotFound":
            raise errors.NotFound("echo", request.text)
        if request.fail_with == "FailedPrecondition":
            raise errors.FailedPrecondition(
                "no", reason="NOT_READY", violations=(errors.PreconditionViolation("STATE", "echo", "not ready"),)
            )
        if request.fail_with == "QuotaExceeded":
            raise errors.QuotaExceeded("echo", "too many", retry_after=1.5)
        return echo_pb2.EchoResponse(text=request.text, trace_id=current_trace_ids()[0])

    async def Relay(self, request: Any, context: Any) -> Any:
        stub = echo_pb2_grpc.EchoServiceStub(self.runtime.channel("relay"))
        answer = await stub.Echo(echo_pb2.EchoRequest(text=request.text), timeout=10)
        return echo_pb2.EchoResponse(text=f"relayed:{answer.text}", trace_id=current_trace_ids()[0])

    async def Repeat(self, request: Any, context: Any) -> Any:
        if not 0 <= request.count <= 10_000:
            raise errors.InvalidArgument("count", "must be between 0 and 10000")
        for _ in range(request.count):
            yield echo_pb2.EchoResponse(text=request.text)

    async def Ping(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(text="pong")

    async def Closed(self, request: Any, context: Any) -> Any:
        return echo_pb2.EchoResponse(text="should never be reached")


def echo_mount(runtime: Runtime) -> Mount:
    """The Echo service as a mount for `create_server`."""
    return Mount(
        echo_pb2.DESCRIPTOR.services_by_name["EchoService"],
        EchoServicer(runtime),
        echo_pb2_grpc.add_EchoServiceServicer_to_server,
    )


async def build(runtime: Runtime) -> Service:
    """Service builder for `servers.mesh.server.run`."""
    return Service(mounts=[echo_mount(runtime)])
