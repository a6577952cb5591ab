"""The WatchRevocations stream: the backlog from a resume point, a caught-up marker, then live revocations.

Order of messages on one stream:

1. Every stored revocation with a sequence above the resume point, in sequence order, in
   batches of at most `WATCH_BATCH`. The resume point is `after_sequence`, unless it is ahead
   of the store's last sequence or below the highest purged one: then it is 0 and the first
   message carries `reset = true` (the watcher replaces its whole set).
2. One message with `caught_up = true`, no revocations and the published `keys` (it carries
   `reset` itself when there was no backlog to carry it).
3. The published `keys` again whenever the key ring changes (a rotation here, or one another
   replica made, seen when this process reloads its keys), before any revocation that follows.
4. Each revocation committed afterwards, as it happens (until the server drains, which ends
   the stream cleanly so the watcher resumes elsewhere): a revocation recorded by this process
   wakes the stream at once (an asyncio event), one recorded by another replica sharing the
   database within `refresh_seconds`. The stream always re-reads the store from its last
   sequence, so a wake-up that covers several revocations misses none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from servers.tokens import messages
from servers.tokens.authority import TokenAuthority
from servers.tokens.revocations import resume_point
from servers.tokens.store import TokenStore
from shieldx.tokens.v1 import tokens_pb2

WATCH_BATCH = 500
"""Most revocations in one WatchRevocations message."""


async def revocation_stream(
    store: TokenStore, authority: TokenAuthority, after_sequence: int
) -> AsyncIterator[tokens_pb2.WatchRevocationsResponse]:
    """The messages of one WatchRevocations call; runs until the caller goes away."""
    marks = await store.revocation_marks()
    point = resume_point(after_sequence, marks.last_sequence, marks.purged_through)
    reset = point.reset
    cursor = point.after_sequence
    async for batch in _stored_after(store, cursor, marks.last_sequence):
        yield tokens_pb2.WatchRevocationsResponse(revocations=batch, reset=reset)
        reset = False
        cursor = batch[-1].sequence
    # Every sequence up to the mark read at the start was committed before it was read, so
    # one that was not sent has been purged: skip past it.
    cursor = max(cursor, marks.last_sequence)
    generation = authority.key_generation
    yield tokens_pb2.WatchRevocationsResponse(reset=reset, caught_up=True, keys=published_keys(authority))
    while True:
        if not await authority.wait_beyond(cursor, key_generation=generation):
            return  # the server is draining; the watcher resumes from `cursor` elsewhere
        if authority.key_generation != generation:
            generation = authority.key_generation
            yield tokens_pb2.WatchRevocationsResponse(keys=published_keys(authority))
        target = authority.latest_sequence
        async for batch in _stored_after(store, cursor, target):
            yield tokens_pb2.WatchRevocationsResponse(revocations=batch)
            cursor = batch[-1].sequence
        cursor = max(cursor, target)


def published_keys(authority: TokenAuthority) -> tokens_pb2.PublicKeySet:
    """The keys ListPublicKeys lists now, as one complete set."""
    now = authority.now()
    return tokens_pb2.PublicKeySet(keys=[messages.public_key_message(key, now) for key in authority.published()])


async def _stored_after(store: TokenStore, cursor: int, through: int) -> AsyncIterator[list[tokens_pb2.Revocation]]:
    """Stored revocations after `cursor` in batches, until the store has no more up to `through`."""
    while True:
        batch = await store.revocations_after(cursor, WATCH_BATCH)
        if not batch:
            return
        yield [messages.revocation_message(r) for r in batch]
        cursor = batch[-1].sequence
        if len(batch) < WATCH_BATCH and cursor >= through:
            return
