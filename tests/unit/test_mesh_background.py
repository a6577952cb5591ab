"""Background loops: failing steps retried with growing pauses, reset by a success; cancelling can wait for a round."""

from __future__ import annotations

import asyncio

import pytest

from clients.backoff import Backoff
from servers.mesh import background
from servers.mesh.background import repeat


def test_backoff_doubles_to_its_ceiling_within_the_jitter_and_starts_over_after_a_success() -> None:
    backoff = Backoff(1.0, 5.0)
    pauses = [backoff.next() for _ in range(5)]
    for pause, nominal in zip(pauses, [1.0, 2.0, 4.0, 5.0, 5.0], strict=True):
        assert nominal * 0.8 <= pause <= nominal * 1.2
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.failures == 0 and 0.8 <= backoff.next() <= 1.2


async def test_a_loop_outlives_failing_steps_and_pauses_longer_while_they_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def record(seconds: float) -> None:
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(background.asyncio, "sleep", record)
    outcomes = iter([False, False, True, True])
    done = asyncio.Event()

    async def step() -> None:
        outcome = next(outcomes, None)
        if outcome is None:
            done.set()
            await asyncio.Event().wait()
        if not outcome:
            raise RuntimeError("store down")

    loop = asyncio.create_task(repeat("test", step, 1.0, max_backoff=60.0))
    await asyncio.wait_for(done.wait(), 10)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert 1.6 <= pauses[0] <= 2.4 and 3.2 <= pauses[1] <= 4.8, pauses
    assert pauses[2:] == [1.0, 1.0]


@pytest.mark.parametrize("finish", [True, False])
async def test_cancelling_waits_for_the_round_under_way_only_when_asked(finish: bool) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []

    async def step() -> None:
        started.set()
        await release.wait()
        finished.append(True)

    loop = asyncio.create_task(repeat("test", step, 3600.0, finish_round_on_cancel=finish))
    await asyncio.wait_for(started.wait(), 10)
    loop.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert finished == ([True] if finish else [])
