"""The tracing resource: every exported span says which service and which version sent it."""

from __future__ import annotations

import pytest

from servers.mesh.tracing import tracing_resource


def test_spans_carry_the_service_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shieldx-credits")
    attributes = tracing_resource("v2").attributes
    assert attributes["service.version"] == "v2" and attributes["service.name"] == "shieldx-credits"
    assert attributes["service.namespace"] == "shieldx"
