"""Second-order character Markov chains that invent names (usernames, merchants) from a corpus.

The chain is trained once into a cumulative transition table (a numpy array with one row per
two-character context), and generation advances thousands of names in parallel one character
per step: each step is one `searchsorted` over the flattened table. Names that copy a corpus
entry, break the length bounds or fail the chain's pattern are rejected and drawn again, so the
output is always novel and well-formed. Same Generator state, same names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from servers.mesh.errors import FailedPrecondition, InvalidArgument

ORDER = 2
"""Characters of context each transition depends on."""

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
"""Where the shipped training corpora live."""

MAX_GENERATE = 250_000
"""Most names one `generate` call returns; bounds memory per call (a synthetic chunk needs ≤ 200,000)."""

_BOUNDARY = 0
# Index 0 is both the start padding and the end symbol: a name starts in context (0, 0) and
# ends when 0 is drawn, so one symbol covers both without widening the table.

_MAX_ROUNDS = 64
# A chain whose corpus is so small that nearly every output copies it would loop forever;
# after this many rounds of rejection it is reported as unusable instead.


@dataclass(frozen=True)
class NameBounds:
    """Length limits and shape a generated name must meet."""

    min_length: int = 3
    """Fewest characters a name may have."""
    max_length: int = 24
    """Most characters a name may have."""
    pattern: str | None = None
    """Regular expression a whole name must match (None: anything the chain produces)."""


class MarkovNameChain:
    """A trained order-2 character chain: `generate(count, rng)` returns novel names."""

    def __init__(
        self,
        alphabet: str,
        cumulative: NDArray[np.float64],
        corpus: frozenset[str],
        bounds: NameBounds,
    ) -> None:
        """Use `train` or `from_corpus_file`; this takes an already built table."""
        size = len(alphabet) + 1
        if cumulative.shape != (size * size, size):
            raise ValueError("transition table does not match the alphabet")
        self.alphabet = alphabet
        """Characters the chain can emit (index i + 1 in the table is alphabet[i])."""
        self.corpus = corpus
        """The training names; generated names never equal one of them."""
        self.bounds = bounds
        """Length and shape limits of generated names."""
        self._size = size
        # Row r of the table holds cumulative probabilities in (0, 1]; adding r to every entry
        # makes the flattened table one increasing sequence, so a single searchsorted finds
        # the next symbol of every name at once.
        self._flat = (cumulative + np.arange(size * size, dtype=np.float64)[:, None]).ravel()
        self._pattern = re.compile(bounds.pattern) if bounds.pattern else None
        codes = np.frombuffer(("\0" + alphabet).encode("utf-32-le"), dtype=np.uint32)
        self._codes = codes.copy()

    @classmethod
    def train(cls, names: Iterable[str], bounds: NameBounds | None = None) -> MarkovNameChain:
        """Count the order-2 transitions of `names` (start and end symbols included)."""
        corpus = frozenset(name for name in (n.strip() for n in names) if name)
        if not corpus:
            raise InvalidArgument("corpus", "a Markov chain needs at least one training name")
        if any("\0" in name for name in corpus):
            raise InvalidArgument("corpus", "training names must not contain NUL")
        alphabet = "".join(sorted({char for name in corpus for char in name}))
        index = {char: position + 1 for position, char in enumerate(alphabet)}
        size = len(alphabet) + 1
        counts = np.zeros((size * size, size), dtype=np.float64)
        for name in sorted(corpus):
            symbols = [_BOUNDARY] * ORDER + [index[char] for char in name] + [_BOUNDARY]
            for position in range(ORDER, len(symbols)):
                context = symbols[position - 2] * size + symbols[position - 1]
                counts[context, symbols[position]] += 1
        totals = counts.sum(axis=1, keepdims=True)
        unseen = totals[:, 0] == 0
        # Contexts never seen in training cannot be reached, but give them a defined row
        # (always end) so the table is a valid distribution everywhere.
        counts[unseen, _BOUNDARY] = 1
        totals[unseen] = 1
        cumulative = np.cumsum(counts / totals, axis=1)
        cumulative[:, -1] = 1.0
        return cls(alphabet, cumulative, corpus, bounds or NameBounds())

    @classmethod
    def from_corpus_file(cls, path: Path, bounds: NameBounds | None = None) -> MarkovNameChain:
        """Train on a UTF-8 file with one name per line (blank lines ignored)."""
        return cls.train(path.read_text(encoding="utf-8").splitlines(), bounds)

    def generate(self, count: int, rng: np.random.Generator) -> NDArray[np.str_]:
        """`count` novel names as a unicode array; deterministic in the state of `rng`.

        Raises InvalidArgument(`count`) outside [0, MAX_GENERATE] and FailedPrecondition
        (CORPUS_EXHAUSTED) if the chain keeps reproducing its corpus.
        """
        if count < 0 or count > MAX_GENERATE:
            raise InvalidArgument("count", f"must be between 0 and {MAX_GENERATE}")
        accepted: list[str] = []
        seen: set[str] = set()
        for _ in range(_MAX_ROUNDS):
            missing = count - len(accepted)
            if missing == 0:
                break
            # Draw a margin above what is missing so one round usually suffices.
            self._accept(self._walk(missing + missing // 4 + 8, rng), accepted, seen, count)
        if len(accepted) < count:
            raise FailedPrecondition(
                "the Markov chain reproduces its corpus too often to invent enough new names",
                reason="CORPUS_EXHAUSTED",
            )
        return np.array(accepted, dtype=f"<U{self.bounds.max_length}")

    def _walk(self, count: int, rng: np.random.Generator) -> NDArray[np.uint32]:
        """Advance `count` names in parallel; rows are symbol codes, 0-terminated."""
        width = self.bounds.max_length + 1
        symbols = np.zeros((count, width), dtype=np.uint16 if self._size <= 2**16 else np.uint32)
        previous = np.zeros(count, dtype=np.int64)
        current = np.zeros(count, dtype=np.int64)
        alive = np.arange(count)
        for step in range(width):
            if alive.size == 0:
                break
            contexts = previous[alive] * self._size + current[alive]
            targets = rng.random(alive.size) + contexts
            chosen = np.searchsorted(self._flat, targets, side="right") - contexts * self._size
            # Rounding can land a hair past a row's end; clamp to the row's last symbol.
            np.clip(chosen, 0, self._size - 1, out=chosen)
            symbols[alive, step] = chosen
            previous[alive] = current[alive]
            current[alive] = chosen
            alive = alive[chosen != _BOUNDARY]
        # Names still running at max_length + 1 symbols are too long; mark them for rejection.
        too_long = symbols[:, -1] != _BOUNDARY
        symbols[too_long] = _BOUNDARY
        return self._codes[symbols[:, :-1]]

    def _accept(self, codes: NDArray[np.uint32], accepted: list[str], seen: set[str], count: int) -> None:
        """Append to `accepted` the names among `codes` that meet the bounds and are novel and
        distinct, in draw order, until it holds `count`."""
        width = codes.shape[1]
        names = np.ascontiguousarray(codes).view(f"<U{width}").ravel()
        lengths = np.strings.str_len(names)
        keep = lengths >= self.bounds.min_length
        for name in names[keep].tolist():
            if len(accepted) == count:
                return
            if name in self.corpus or name in seen:
                continue
            if self._pattern is not None and not self._pattern.fullmatch(name):
                continue
            seen.add(name)
            accepted.append(name)


USERNAME_BOUNDS = NameBounds(
    min_length=4,
    max_length=20,
    # Lower-case handle: starts and ends with a letter, single `_` or `-` between alphanumeric
    # runs, so every username is also a valid e-mail local part. No dots and a letter at the
    # end leave `.<chunk>` and two-digit suffixes unambiguous (synthetic.py makes names unique
    # across chunks with them); never `svc-`, the prefix of honeytoken client ids.
    pattern=r"(?!svc-)[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*(?<=[a-z])",
)
"""Bounds of generated usernames."""

MERCHANT_BOUNDS = NameBounds(
    min_length=5,
    max_length=36,
    pattern=r"[A-Z0-9][A-Za-z0-9'&.]*(?: [A-Za-z0-9'&.]+)*",
)
"""Bounds of generated merchant names."""


def username_chain() -> MarkovNameChain:
    """The chain trained on the shipped username corpus."""
    return MarkovNameChain.from_corpus_file(CORPUS_DIR / "usernames.txt", USERNAME_BOUNDS)


def merchant_chain() -> MarkovNameChain:
    """The chain trained on the shipped merchant corpus."""
    return MarkovNameChain.from_corpus_file(CORPUS_DIR / "merchants.txt", MERCHANT_BOUNDS)
