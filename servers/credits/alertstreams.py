"""WatchAlerts streams: the alert feed of the single store, or the feeds of every shard merged.

Each store numbers its alerts in commit order (`alerts.AlertFeed`); a watcher resumes from an
opaque token. On shards every shard numbers its own alerts, so the merged stream's token holds
a place per shard (`ShardPlaces`): each shard's alerts come in its own order, and a shard first
seen after the watch started (one that joined) is read from its beginning. Alerts copied by a
rebalance carry no number on their new shard, so a move never announces an alert twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from servers.credits.alerts import AlertCursor, AlertFeed
from servers.credits.events import LowBalanceAlerted
from servers.credits.placement import AccountPlacement, Shard, unreachable_as_unavailable
from servers.mesh.errors import InvalidArgument

_TOKEN_PREFIX = "s1:"
_BATCH = 200


class AlertStream(Protocol):
    """What WatchAlerts reads: alerts with the token that resumes after each."""

    def notify(self) -> None:
        """Wake the watchers: an alert was just committed in this process."""
        ...

    def watch(self, account_id: str, resume_token: str) -> AsyncIterator[tuple[LowBalanceAlerted, str]]:
        """Alerts (of one account, or all) after `resume_token` (empty: from now on), as they come."""
        ...


class StoreAlerts:
    """The alert feed of the single store."""

    def __init__(self, feed: AlertFeed) -> None:
        self.feed = feed

    def notify(self) -> None:
        """Wake the watchers."""
        self.feed.notify()

    async def watch(self, account_id: str, resume_token: str) -> AsyncIterator[tuple[LowBalanceAlerted, str]]:
        """Alerts after `resume_token`, as the feed gives them."""
        cursor = AlertCursor.parse(resume_token) if resume_token else None
        async for record in self.feed.watch(account_id, cursor):
            yield record.alert, record.cursor.token()


@dataclass(frozen=True)
class ShardPlaces:
    """A place in the merged feed: the last alert number seen on each shard."""

    places: dict[str, int]

    def token(self) -> str:
        """The opaque resume token of this place."""
        text = _TOKEN_PREFIX + json.dumps(self.places, sort_keys=True, separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str, field: str = "resume_token") -> ShardPlaces:
        """The place a token names; InvalidArgument(field) for anything this service did not issue."""
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
            if not text.startswith(_TOKEN_PREFIX):
                raise ValueError(text)
            places = json.loads(text[len(_TOKEN_PREFIX) :])
        except (ValueError, UnicodeError, binascii.Error) as exc:
            raise InvalidArgument(field, "is not a token this service issued") from exc
        valid = isinstance(places, dict) and all(
            isinstance(k, str) and type(v) is int and 0 <= v < 2**63 for k, v in places.items()
        )
        if not valid:
            raise InvalidArgument(field, "is not a token this service issued")
        return cls(dict(places))


class ShardAlerts:
    """The alert feeds of every shard, merged into one resumable stream."""

    def __init__(self, placement: AccountPlacement, *, poll_seconds: float = 1.0) -> None:
        self.placement = placement
        self.poll_seconds = poll_seconds
        self._changed = asyncio.Event()
        self._feeds: dict[Shard, AlertFeed] = {}

    def notify(self) -> None:
        """An alert was just committed in this process: wake the watchers here and in other processes
        (on every shard's channel; which shard it was is not said, and alerts are rare)."""
        self.wake()
        for shard in self.placement.shards:
            wakeups = self._feed(shard).wakeups
            if wakeups is not None:
                wakeups.publish()

    def wake(self) -> None:
        """Wake every watcher of this process."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def watch(self, account_id: str, resume_token: str) -> AsyncIterator[tuple[LowBalanceAlerted, str]]:
        """Alerts of every shard after `resume_token` (empty: from now on), as they are recorded."""
        async with contextlib.AsyncExitStack() as listening:
            heard: set[Shard] = set()
            if resume_token:
                places = dict(ShardPlaces.parse(resume_token).places)
            else:
                places = {}
                for shard in self.placement.shards:
                    with unreachable_as_unavailable(self.placement, shard):
                        places[shard.name] = (await self._feed(shard).head()).alert_seq
            while True:
                changed = self._changed
                full = False
                for shard in self.placement.shards:
                    feed = self._feed(shard)
                    if shard not in heard:  # other processes' alerts on it wake us from now on
                        heard.add(shard)
                        await listening.enter_async_context(feed.watching())
                    with unreachable_as_unavailable(self.placement, shard):
                        batch = await feed.after(AlertCursor(places.get(shard.name, 0)), account_id, _BATCH)
                    for record in batch:
                        places[shard.name] = record.cursor.alert_seq
                        yield record.alert, ShardPlaces(dict(places)).token()
                    full = full or len(batch) == _BATCH
                if full:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.poll_seconds)

    def _feed(self, shard: Shard) -> AlertFeed:
        feed = self._feeds.get(shard)
        if feed is None:
            current = set(self.placement.shards)
            for retired in [s for s in self._feeds if s not in current]:
                del self._feeds[retired]
            feed = self._feeds[shard] = AlertFeed(shard.database, poll_seconds=self.poll_seconds, wake=self.wake)
        return feed
