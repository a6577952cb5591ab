"""Pauses between retries: exponential backoff with jitter, for servers' loops and the client library's watches."""

from __future__ import annotations

import random

JITTER = 0.2
"""Pauses after failures vary by ± this fraction, so replicas that failed together retry apart."""


class Backoff:
    """Exponential pauses with jitter: `initial`, doubling up to `ceiling`, back to `initial` after a success."""

    def __init__(self, initial: float, ceiling: float, *, jitter: float = JITTER) -> None:
        self.initial, self.ceiling, self.jitter = initial, max(initial, ceiling), jitter
        self.current = initial
        self.failures = 0

    def reset(self) -> None:
        """A success: the next failure pauses `initial` again."""
        self.current = self.initial
        self.failures = 0

    def next(self) -> float:
        """The pause after one more failure."""
        pause = self.current * random.uniform(1 - self.jitter, 1 + self.jitter)
        self.current = min(self.current * 2, self.ceiling)
        self.failures += 1
        return pause
