"""Every RPC of every contract has its typed client method, with the contract's shape and types."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

import clients
import shieldx
from clients.rpc import ServerStream, ServiceClient, Unary


def contract_services() -> Iterator[ServiceDescriptor]:
    for info in pkgutil.walk_packages(shieldx.__path__, "shieldx."):
        if info.name.endswith("_pb2"):
            yield from importlib.import_module(info.name).DESCRIPTOR.services_by_name.values()


def client_classes() -> dict[str, type[ServiceClient]]:
    for info in pkgutil.walk_packages(clients.__path__, "clients."):
        importlib.import_module(info.name)
    found: dict[str, type[ServiceClient]] = {}
    pending = list(ServiceClient.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.service:
            found[cls.service] = cls
    return found


SERVICES = sorted(contract_services(), key=lambda s: s.full_name)


@pytest.mark.parametrize("service", SERVICES, ids=[s.full_name for s in SERVICES])
def test_every_rpc_has_a_typed_client_method(service: ServiceDescriptor) -> None:
    client = client_classes().get(service.full_name)
    assert client is not None, f"no ServiceClient subclass with service = {service.full_name!r}"
    declared = {d.name: d for d in vars(client).values() if isinstance(d, Unary | ServerStream)}
    missing = [m.name for m in service.methods if m.name not in declared]
    assert not missing, f"{client.__name__} lacks methods for {missing}"
    for method in service.methods:
        assert_shape(declared[method.name], method)


def assert_shape(declaration: Unary[Any, Any] | ServerStream[Any, Any], method: MethodDescriptor) -> None:
    expected = ServerStream if method.server_streaming else Unary
    assert isinstance(declaration, expected), f"{method.full_name} is declared as {type(declaration).__name__}"
    assert declaration.request.DESCRIPTOR.full_name == method.input_type.full_name, method.full_name
    assert declaration.response.DESCRIPTOR.full_name == method.output_type.full_name, method.full_name
