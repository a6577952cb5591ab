"""A synthetic batch as GenerateSyntheticData streams it: chunks with their quality, honeytokens, batch quality.

`stream_batch` is the whole rule of the stream, so the servicer only converts each
`StreamedChunk` to its response message: chunk k carries its rows, the exact quality report
of those rows and the honeytokens planted in them; the last chunk also carries the quality of
the whole batch. Everything but `generation_seconds` is a function of (kind, seed, count,
chunk size, honeytoken count, batch id, now), so a retried request yields the same tokens.
Generation is CPU-bound numpy work: run the iterator in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from servers.deception.honeytokens import Honeytoken, honeytoken_rows, plant_in_users
from servers.deception.quality import BatchQualityAccumulator, QualityReport, assess
from servers.deception.synthetic import (
    ChunkPlan,
    DatasetKind,
    SyntheticChunk,
    SyntheticDataGenerator,
    check_seed,
    plan_chunks,
)
from servers.mesh.errors import InvalidArgument

MAX_STREAMED_CHUNK_SIZE = 25_000
"""Most rows per streamed chunk. A users row serialises to ~140 bytes, so 25,000 rows stay under
gRPC's default 4 MiB message limit with room to spare (in-process chunks may be larger)."""


@dataclass(frozen=True)
class StreamedChunk:
    """One response of the stream."""

    chunk: SyntheticChunk
    """The rows, with seed, version and position in the batch."""
    quality: QualityReport
    """Quality of this chunk's rows (exact statistics)."""
    honeytokens: tuple[Honeytoken, ...]
    """Honeytokens planted in this chunk's rows, secrets included: register their records."""
    batch_quality: QualityReport | None
    """On the last chunk: quality of the whole batch (within 1/2048 of exact); else None."""
    generation_seconds: float
    """Wall time spent generating and scoring this chunk."""


def stream_batch(
    generator: SyntheticDataGenerator,
    kind: DatasetKind,
    *,
    seed: int,
    count: int,
    batch_id: str,
    now: datetime,
    chunk_size: int = 0,
    honeytoken_count: int = 0,
) -> Iterator[StreamedChunk]:
    """The chunks of one batch, in order. Every argument is checked before this returns."""
    check_seed(seed)
    if chunk_size > MAX_STREAMED_CHUNK_SIZE:
        raise InvalidArgument("chunk_size", f"must be at most {MAX_STREAMED_CHUNK_SIZE} rows per streamed chunk")
    plans = plan_chunks(count, chunk_size)
    if not batch_id:
        raise InvalidArgument("batch_id", "must not be empty")
    if honeytoken_count and kind is not DatasetKind.USERS:
        raise InvalidArgument("honeytoken_count", "only users data carries credentials to plant honeytokens in")
    planted_rows = honeytoken_rows(seed, count, honeytoken_count)
    return _chunks(generator, kind, seed, count, plans, planted_rows, batch_id, now)


def _chunks(
    generator: SyntheticDataGenerator,
    kind: DatasetKind,
    seed: int,
    count: int,
    plans: Iterator[ChunkPlan],
    planted_rows: NDArray[np.int64],
    batch_id: str,
    now: datetime,
) -> Iterator[StreamedChunk]:
    batch = BatchQualityAccumulator(generator.targets(kind, 0, count))
    for plan in plans:
        started = time.perf_counter()
        chunk = generator.generate_chunk(kind, seed, plan)
        quality = assess(chunk.columns, generator.targets(kind, plan.row_offset, plan.row_count))
        batch.add(chunk.columns)
        tokens: list[Honeytoken] = []
        if planted_rows.size:
            tokens = plant_in_users(
                chunk.columns, row_offset=plan.row_offset, rows=planted_rows, batch_id=batch_id, seed=seed, now=now
            )
        batch_quality = batch.report() if plan.last else None
        yield StreamedChunk(chunk, quality, tuple(tokens), batch_quality, time.perf_counter() - started)
