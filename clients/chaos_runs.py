"""Running a chaos experiment from a spec file to its report, as the CLI and the Chaos Toolkit
extension do: parse the spec (proto3 JSON, or YAML of the same shape), create, start, follow the
watch stream until the report is final."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from clients.deployment import ChaosClient
from shieldx.deployment.v1 import chaos_pb2

Progress = Callable[[chaos_pb2.WatchChaosExperimentResponse], None]


def spec_from_mapping(document: Mapping[str, Any]) -> chaos_pb2.ChaosExperimentSpec:
    """A spec from its proto3 JSON mapping (`{"name": ..., "type": "CHAOS_TYPE_HIGH_LATENCY", ...}`);
    a document with a `spec` key is read from there. ValueError when it does not fit the contract."""
    body = document.get("spec", document)
    try:
        return json_format.ParseDict(dict(body), chaos_pb2.ChaosExperimentSpec())
    except json_format.ParseError as error:
        raise ValueError(f"not a ChaosExperimentSpec: {error}") from error


def spec_from_file(path: str | Path) -> chaos_pb2.ChaosExperimentSpec:
    """A spec from a JSON or YAML file."""
    text = Path(path).read_text()
    document = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(document, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top")
    return spec_from_mapping(document)


async def start(client: ChaosClient, spec: chaos_pb2.ChaosExperimentSpec) -> chaos_pb2.ChaosExperiment:
    """Create and start an experiment; it is RUNNING when this returns (or the start was refused)."""
    created = await client.create_experiment(
        chaos_pb2.CreateChaosExperimentRequest(request_id=uuid.uuid4().hex, spec=spec)
    )
    started = await client.start_experiment(
        chaos_pb2.StartChaosExperimentRequest(request_id=uuid.uuid4().hex, experiment_id=created.experiment.id)
    )
    return started.experiment


async def follow(
    client: ChaosClient, experiment_id: str, progress: Progress | None = None
) -> chaos_pb2.ChaosExperiment:
    """Follow an experiment until it ended and its recovery was measured; the final experiment."""
    last: chaos_pb2.ChaosExperiment | None = None
    request = chaos_pb2.WatchChaosExperimentRequest(experiment_id=experiment_id)
    async for update in client.watch_experiment(request, timeout=None):
        last = update.experiment
        if progress is not None:
            progress(update)
    if last is None:
        raise RuntimeError(f"the watch of {experiment_id} ended without a message")
    return last


async def run(
    client: ChaosClient, spec: chaos_pb2.ChaosExperimentSpec, progress: Progress | None = None
) -> chaos_pb2.ChaosExperiment:
    """Create, start and follow an experiment to its end."""
    started = await start(client, spec)
    return await follow(client, started.id, progress)


def held(experiment: chaos_pb2.ChaosExperiment) -> bool:
    """True if the experiment completed with its hypothesis holding throughout."""
    return (
        experiment.state == chaos_pb2.CHAOS_STATE_COMPLETED
        and experiment.report.verdict == chaos_pb2.CHAOS_VERDICT_HYPOTHESIS_HELD
    )
