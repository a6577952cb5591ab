"""Wire forms of ledger objects: request timestamps read back exactly, balances with their update time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from servers.credits import messages
from servers.credits.account import AccountState
from servers.mesh.timestamps import timestamp


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 5, 6, 7, 8, 9, 123_456, tzinfo=timezone(timedelta(hours=-7))),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_request_timestamps_read_back_to_the_moment_they_were_made_of(moment: datetime) -> None:
    assert messages.instant(timestamp(moment), "time") == moment


def test_a_balance_carries_its_update_time_only_once_there_is_one() -> None:
    state = AccountState("acme")
    assert not messages.balance(state).HasField("update_time")
    state.updated_at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    state.available, state.held = 7, 3
    message = messages.balance(state)
    assert (message.available, message.held, message.total) == (7, 3, 10)
    assert message.update_time.ToDatetime(tzinfo=UTC) == state.updated_at
