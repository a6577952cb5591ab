"""Credits replay micro-benchmark: how fast stored ledger events decode and fold into account states.

Builds a realistic mixed history with the real decisions (purchases, consumes, reservations
committed, cancelled and expired, transfers, thresholds and alerts over many accounts), turns
it into stored rows (canonical JSON bodies), then times, in one process and one run:

- baseline: a plain dict-update loop over the decoded bodies (the floor of any Python replay);
- decode: stored row -> event, from JSON text (SQLite) and from a decoded dict (PostgreSQL JSONB);
- apply: `AccountState.apply` over the decoded events (what dominates every replay);
- replay: decode from JSON text + apply, end to end;
- verify: audit-chain verification of a slice (hash recomputation per event).

Run: `.venv/bin/python tests/bench/bench_credits_replay.py [--events 1000000] [--accounts 1000]`.
Each phase runs `--repeat` times and reports the best, with the garbage collector on, as in
a server (the fixtures built beforehand are frozen out of its sight, see `main`).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "generated")]

from servers.credits.account import AccountState  # noqa: E402
from servers.credits.audit import GENESIS_HASH, ChainVerifier, seal  # noqa: E402
from servers.credits.commands import (  # noqa: E402
    AccountCommand,
    CancelReservation,
    CommitReservation,
    Consume,
    Purchase,
    Reserve,
    SetThreshold,
    Transfer,
)
from servers.credits.domain import decide, decide_transfer  # noqa: E402
from servers.credits.events import Event, SealedPaymentReference, StoredEvent, decode_event  # noqa: E402
from servers.mesh.errors import DomainError  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
REFERENCE = SealedPaymentReference("v1:0badc0de:" + "QUJD" * 16, "0badc0de:" + "ab" * 32)


@dataclass
class Row:
    """The columns a store reads back per event (hashes left out: replay does not need them)."""

    account_id: str
    version: int
    type: str
    body: str
    occurred_at: datetime
    trace_id: str


def build_history(total: int, accounts: int, seed: int) -> list[Event]:
    """About `total` events over `accounts` accounts, in append order, made by the real decisions."""
    rng = random.Random(seed)
    names = [f"acct-{i:06d}" for i in range(accounts)]
    states = {name: AccountState(name) for name in names}
    events: list[Event] = []
    now = START
    step = 0

    def keep(state: AccountState, new: tuple[Event, ...]) -> None:
        for event in new:
            state.apply(event)
        events.extend(new)

    for name in names:
        keep(states[name], decide(states[name], Purchase(name, 5_000, REFERENCE), now=now).events)
        keep(states[name], decide(states[name], SetThreshold(name, 1_000), now=now).events)
    while len(events) < total:
        step += 1
        now += timedelta(milliseconds=rng.randrange(1, 200))
        name = rng.choice(names)
        state = states[name]
        trace = f"{step:032x}"
        pick = rng.random()
        try:
            if pick < 0.10:
                other = states[rng.choice(names)]
                if other is state:
                    continue
                transfer = Transfer(f"t{step}", name, other.account_id, rng.randrange(1, 300), "settlement")
                decision = decide_transfer(state, other, transfer, now=now, trace_id=trace)
                keep(state, decision.outgoing.events)
                keep(other, decision.incoming.events)
                continue
            command: AccountCommand = Consume(name, rng.randrange(1, 50))
            reservation = next(iter(state.open_reservations.values()), None)
            if pick < 0.20 or state.available < 500:
                command = Purchase(name, rng.randrange(500, 5_000), REFERENCE)
            elif pick < 0.55:
                command = Consume(name, rng.randrange(1, 100), "api call", f"req-{step}")
            elif pick < 0.72:
                ttl = timedelta(seconds=rng.choice([5, 60, 600]))
                command = Reserve(name, f"r{step}", rng.randrange(10, 400), ttl=ttl, description="job")
            elif pick < 0.85 and reservation is not None:
                amount = rng.randrange(1, reservation.amount + 1)
                command = CommitReservation(name, reservation.reservation_id, amount)
            elif 0.85 <= pick < 0.90 and reservation is not None:
                command = CancelReservation(name, reservation.reservation_id)
            elif 0.90 <= pick < 0.91:
                # Thresholds near the balance, so alerts fire and re-arm as it moves.
                command = SetThreshold(name, max(0, state.available + rng.randrange(-300, 300)))
            keep(state, decide(state, command, now=now, trace_id=trace).events)
        except DomainError:
            continue
    return events


def to_rows(events: list[Event]) -> list[Row]:
    """The stored form of every event (canonical JSON body), as a store reads it back."""
    rows = []
    for event in events:
        stored = seal([event], GENESIS_HASH)[0]
        rows.append(
            Row(stored.account_id, stored.version, stored.type, stored.body, stored.occurred_at, stored.trace_id)
        )
    return rows


def best(repeat: int, run: Callable[[], Any]) -> float:
    """Fastest of `repeat` timed runs, in seconds."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def chained(events: list[Event]) -> list[StoredEvent]:
    """The events as sealed rows, each account's chain linked as a store appends them."""
    sealed: list[StoredEvent] = []
    heads: dict[str, bytes] = {}
    for event in events:
        row = seal([event], heads.get(event.account_id, GENESIS_HASH))[0]
        heads[event.account_id] = row.hash
        sealed.append(row)
    return sealed


def measure(
    events: list[Event], rows: list[Row], bodies: list[dict[str, Any]], sealed: list[StoredEvent], repeat: int
) -> dict[str, tuple[int, float]]:
    """Best time of each phase, with the number of events it handled."""

    def baseline() -> None:
        balances: dict[str, int] = {}
        for row, body in zip(rows, bodies, strict=True):
            balances[row.account_id] = balances.get(row.account_id, 0) + body.get("amount", 0)

    def decode_text() -> list[Event]:
        return [decode_event(r.account_id, r.version, r.type, r.body, r.occurred_at, r.trace_id) for r in rows]

    def decode_dict() -> None:
        for r, body in zip(rows, bodies, strict=True):
            decode_event(r.account_id, r.version, r.type, body, r.occurred_at, r.trace_id)

    def apply_only() -> None:
        states = {name: AccountState(name) for name in {r.account_id for r in rows}}
        for event in events:
            states[event.account_id].apply(event)

    def replay_text() -> None:
        states: dict[str, AccountState] = {}
        for r in rows:
            state = states.get(r.account_id)
            if state is None:
                state = states[r.account_id] = AccountState(r.account_id)
            state.apply(decode_event(r.account_id, r.version, r.type, r.body, r.occurred_at, r.trace_id))

    def verify() -> None:
        verifier = ChainVerifier()
        for row in sealed:
            if verifier.check(row) is not None:
                raise AssertionError("chain should verify")

    assert decode_text() == events, "stored form must decode back to the same events"
    count = len(rows)
    return {
        "baseline dict-update loop": (count, best(repeat, baseline)),
        "decode from JSON text": (count, best(repeat, decode_text)),
        "decode from decoded dict (JSONB)": (count, best(repeat, decode_dict)),
        "apply (AccountState.apply)": (count, best(repeat, apply_only)),
        "replay: decode JSON text + apply": (count, best(repeat, replay_text)),
        "audit chain verify": (len(sealed), best(repeat, verify)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to replay (default 1,000,000)")
    parser.add_argument("--accounts", type=int, default=1_000, help="accounts they spread over")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase; the best counts")
    parser.add_argument("--verify", type=int, default=100_000, help="events in the chain-verification slice")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()

    started = time.perf_counter()
    events = build_history(args.events, args.accounts, args.seed)
    rows = to_rows(events)
    bodies = [json.loads(row.body) for row in rows]
    sealed = chained(events[: args.verify])
    built = time.perf_counter() - started
    # The benchmark's own fixtures (millions of rows, bodies and events) stay alive all run; a
    # real replay streams rows in batches. Freezing them keeps the collector from rescanning
    # them in every phase, so it only sees what the phase itself allocates.
    gc.collect()
    gc.freeze()
    phases = measure(events, rows, bodies, sealed, args.repeat)
    results = {
        name: {"events": n, "seconds": round(s, 4), "events_per_second": round(n / s)}
        for name, (n, s) in phases.items()
    }
    mix = Counter(row.type for row in rows)
    if args.json:
        print(json.dumps({"events": len(rows), "accounts": args.accounts, "mix": mix, "phases": results}, indent=2))
        return 0
    print(f"history: {len(rows):,} events over {args.accounts:,} accounts, built in {built:.1f} s")
    print("mix: " + ", ".join(f"{name} {n / len(rows):.1%}" for name, n in mix.most_common()))
    print(f"python {sys.version.split()[0]}, best of {args.repeat}, gc on")
    for name, result in results.items():
        rate, seconds, n = result["events_per_second"], result["seconds"], result["events"]
        print(f"  {name:<36} {rate:>12,} events/s  ({seconds:.3f} s for {n:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
