"""Group commit gathers operations that arrive together, without delaying a lone caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.protobuf.message import Message

from servers.credits.account import AccountState
from servers.credits.domain import Decision
from servers.credits.groupcommit import GroupCommitter, Operation
from shieldx.credits.v1 import credits_pb2


def operation(number: int) -> Operation:
    def decide(state: AccountState, now: object) -> Decision:
        raise AssertionError("the fake committer does not decide")

    def respond(decision: Decision, state: AccountState) -> Message:
        raise AssertionError("the fake committer does not respond")

    request = credits_pb2.ConsumeRequest(account_id="acme", amount=1, request_id=f"r-{number}")
    return Operation(
        "Consume", request, credits_pb2.ConsumeResponse, "acme", decide, respond, f"r-{number}", "", "test"
    )


class Recorder:
    """Commits each group after `seconds`, answering every operation with its group's number."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.groups: list[list[str]] = []

    async def __call__(self, group: Sequence[Operation]) -> None:
        self.groups.append([op.request_id for op in group])
        await asyncio.sleep(self.seconds)
        for op in group:
            op.settle(credits_pb2.ConsumeResponse(event_version=len(self.groups)))


async def submit_all(committer: GroupCommitter, operations: Sequence[Operation]) -> list[Message]:
    return await asyncio.gather(*(committer.submit(op) for op in operations))


async def test_a_lone_caller_is_not_kept_waiting_for_company() -> None:
    recorder = Recorder()
    committer = GroupCommitter(recorder, gather_seconds=10.0)
    for number in range(3):
        await committer.submit(operation(number))
    assert recorder.groups == [["r-0"], ["r-1"], ["r-2"]]
    assert committer.gather_endings == {}, "a lone caller's group goes at once, without gathering"


async def test_operations_arriving_while_a_group_commits_go_together_in_the_next() -> None:
    recorder = Recorder(seconds=0.02)
    committer = GroupCommitter(recorder, gather_seconds=0.0)
    first = asyncio.ensure_future(committer.submit(operation(0)))
    await asyncio.sleep(0.005)
    await submit_all(committer, [operation(n) for n in range(1, 6)])
    await first
    assert recorder.groups == [["r-0"], ["r-1", "r-2", "r-3", "r-4", "r-5"]]


async def test_under_load_a_group_waits_until_as_many_operations_as_the_last_one_are_back() -> None:
    recorder = Recorder()
    committer = GroupCommitter(recorder, gather_seconds=2.0)
    await submit_all(committer, [operation(n) for n in range(4)])  # load: four callers

    async def trickle(numbers: range) -> list[Message]:
        answers = []
        for number in numbers:
            answers.append(asyncio.ensure_future(committer.submit(operation(number))))
            await asyncio.sleep(0.005)  # well within a gathering slice (0.2 s)
        return list(await asyncio.gather(*answers))

    await trickle(range(4, 8))
    assert committer.gather_endings == {"callers_stopped": 1}, "the wait ends with the fourth operation, no timer"
    await trickle(range(8, 14))
    assert recorder.groups[:2] == [["r-0", "r-1", "r-2", "r-3"], ["r-4", "r-5", "r-6", "r-7"]]
    assert recorder.groups[2] == ["r-8", "r-9", "r-10", "r-11"]


async def test_a_group_keeps_growing_while_the_loop_keeps_bringing_operations() -> None:
    recorder = Recorder()
    committer = GroupCommitter(recorder, gather_seconds=2.0)
    await submit_all(committer, [operation(0), operation(1)])
    answers = []
    for number in range(2, 12):  # a busy server: another operation every turn of the loop
        answers.append(asyncio.ensure_future(committer.submit(operation(number))))
        await asyncio.sleep(0)
    await asyncio.gather(*answers)
    assert recorder.groups == [["r-0", "r-1"], [f"r-{n}" for n in range(2, 12)]]


async def test_gathering_stops_once_a_slice_brings_nobody_new() -> None:
    recorder = Recorder()
    committer = GroupCommitter(recorder, gather_seconds=0.5)
    await submit_all(committer, [operation(0), operation(1)])
    await committer.submit(operation(2))
    assert committer.gather_endings == {"quiet_slice": 1}, "one quiet slice (0.05 s) ends the wait, not 0.5 s"
    assert recorder.groups == [["r-0", "r-1"], ["r-2"]]


async def test_groups_never_exceed_the_maximum() -> None:
    recorder = Recorder(seconds=0.01)
    committer = GroupCommitter(recorder, max_group=4, gather_seconds=0.5)
    await submit_all(committer, [operation(n) for n in range(10)])
    assert [len(group) for group in recorder.groups] == [4, 4, 2]
    assert sorted(id_ for group in recorder.groups for id_ in group) == sorted(f"r-{n}" for n in range(10))
