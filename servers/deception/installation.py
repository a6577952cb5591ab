"""The installation seed every decoy fingerprint is derived from, and its persistence.

One seed per installation makes every detail of every template (host names, versions, run ids,
keys) reproducible, so a restart presents exactly the same fingerprint, while two
installations drawn from different seeds do not look alike.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from clients.secret_files import create_secret_file
from servers.mesh.errors import InvalidArgument

T = TypeVar("T")

SEED_BITS = 128
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Installation:
    """The identity of one deception installation."""

    seed: int
    """128-bit seed of every randomised fingerprint detail."""
    created_at: datetime
    """When the installation was first set up (UTC); anchors uptimes the decoys report."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 1 << SEED_BITS:
            raise InvalidArgument("seed", f"must be a non-negative integer below 2**{SEED_BITS}")
        if self.created_at.tzinfo is None:
            raise InvalidArgument("created_at", "must carry a time zone")

    @classmethod
    def generate(cls, now: datetime | None = None) -> Installation:
        """A new installation with a seed from the operating system's CSPRNG."""
        return cls(secrets.randbits(SEED_BITS), (now or datetime.now(UTC)).astimezone(UTC))

    def draw(self, label: str) -> Draw:
        """The deterministic random stream of one named detail, e.g. `ssh` or `hostname`."""
        return Draw(self.seed, label)

    def to_json(self) -> str:
        """The persisted form."""
        return json.dumps(
            {"format": FORMAT_VERSION, "seed": f"{self.seed:032x}", "created_at": self.created_at.isoformat()},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Installation:
        """Parse `to_json` output; InvalidArgument if it is not one."""
        try:
            record = json.loads(text)
            seed = int(record["seed"], 16)
            created_at = datetime.fromisoformat(record["created_at"])
            version = int(record.get("format", FORMAT_VERSION))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument("installation", "is not a saved installation") from exc
        if version != FORMAT_VERSION:
            raise InvalidArgument("installation", f"format {version} is not supported")
        return cls(seed, created_at)


def load_or_create_installation(path: Path, now: datetime | None = None) -> Installation:
    """The installation saved at `path`, or a new one saved there (atomically, mode 0600).

    The file is the fingerprint's identity: deleting it makes the next start look like a
    different machine.
    """
    if path.exists():
        return Installation.from_json(path.read_text(encoding="utf-8"))
    installation = Installation.generate(now)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Two processes racing to create it: the first one's file stays, the other reads it.
    if create_secret_file(path, installation.to_json().encode("utf-8")):
        return installation
    return Installation.from_json(path.read_text(encoding="utf-8"))


class Draw:
    """A deterministic random stream: SHA-256 in counter mode over (seed, label).

    Hand-rolled rather than `random.Random` so the fingerprint of an installation does not
    change with the Python version's sampling algorithms.
    """

    def __init__(self, seed: int, label: str) -> None:
        self._key = hashlib.sha256(f"{seed:032x}/{label}".encode()).digest()
        self._counter = 0
        self._pool = b""

    def bytes(self, count: int) -> bytes:
        """`count` pseudo-random bytes."""
        while len(self._pool) < count:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._pool += block
        out, self._pool = self._pool[:count], self._pool[count:]
        return out

    def below(self, bound: int) -> int:
        """A uniform integer in [0, bound), by rejection so there is no modulo bias."""
        if bound <= 0:
            raise ValueError("bound must be positive")
        width = (bound - 1).bit_length() or 1
        nbytes = (width + 7) // 8
        while True:
            value = int.from_bytes(self.bytes(nbytes), "big") >> (nbytes * 8 - width)
            if value < bound:
                return value

    def between(self, low: int, high: int) -> int:
        """A uniform integer in [low, high]."""
        return low + self.below(high - low + 1)

    def choice(self, options: Sequence[T]) -> T:
        """One element of `options`, uniformly."""
        return options[self.below(len(options))]

    def chance(self, probability: float) -> bool:
        """True with the given probability (resolution 1/2**32)."""
        return self.below(1 << 32) < int(probability * (1 << 32))

    def hex(self, digits: int) -> str:
        """`digits` lower-case hex digits."""
        return self.bytes((digits + 1) // 2).hex()[:digits]
