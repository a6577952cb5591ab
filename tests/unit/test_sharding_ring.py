"""The consistent-hash ring: balance, minimal movement, weights and determinism over 1,000,000 keys."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from servers.mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from servers.sharding.ring import (
    RING_SIZE,
    HashRing,
    RingMember,
    UInt32Array,
    choose_placement_seed,
    fmix32,
    fmix32_array,
    key_point,
    key_points,
)

ROOT = Path(__file__).resolve().parents[2]
KEYS = 1_000_000


def grow(shard_ids: list[str], ring: HashRing | None = None, weights: dict[str, float] | None = None) -> HashRing:
    """Add shards one by one the way the registry does: each with its chosen placement seed."""
    ring = ring or HashRing()
    for shard_id in shard_ids:
        weight = (weights or {}).get(shard_id, 1.0)
        seed = choose_placement_seed(ring, shard_id, weight)
        ring = ring.with_member(RingMember(shard_id, weight, seed))
    return ring


@pytest.fixture(scope="module")
def points() -> UInt32Array:
    return key_points([f"acct-{i:07d}" for i in range(KEYS)])


@pytest.fixture(scope="module")
def eight() -> HashRing:
    return grow([f"shard-{i}" for i in range(8)])


def loads(ring: HashRing, points: UInt32Array) -> np.ndarray:
    return np.bincount(ring.locate_points(points), minlength=len(ring))


def test_busiest_of_eight_shards_carries_at_most_110_percent_of_the_mean(eight: HashRing, points: UInt32Array) -> None:
    counts = loads(eight, points)
    assert counts.sum() == KEYS
    assert counts.max() <= 1.10 * counts.mean()


def test_stats_predict_the_measured_load(eight: HashRing, points: UInt32Array) -> None:
    measured = loads(eight, points) / KEYS
    stats = eight.stats()
    assert [s.shard_id for s in stats.shards] == list(eight.shard_ids)
    assert [s.points for s in stats.shards] == [256] * 8
    assert stats.total_points == 8 * 256
    assert math.isclose(sum(s.load_share for s in stats.shards), 1.0, abs_tol=1e-12)
    for share, seen in zip(stats.shards, measured, strict=True):
        assert share.target_share == pytest.approx(1 / 8)
        assert share.load_share == pytest.approx(seen, abs=0.002)
    assert stats.max_load_ratio == pytest.approx(measured.max() * 8, abs=0.02)


def test_a_ninth_shard_takes_at_most_115_percent_of_a_ninth_and_only_for_itself(
    eight: HashRing, points: UInt32Array
) -> None:
    nine = grow(["shard-8"], eight)
    before = np.asarray(eight.shard_ids)[eight.locate_points(points)]
    after = np.asarray(nine.shard_ids)[nine.locate_points(points)]
    moved = before != after
    assert moved.mean() <= 1.15 / 9
    assert moved.mean() >= 0.85 / 9
    assert set(after[moved].tolist()) == {"shard-8"}
    assert eight.moved_share(nine) == pytest.approx(moved.mean(), abs=0.002)


def test_removing_a_shard_moves_only_the_keys_it_held(eight: HashRing, points: UInt32Array) -> None:
    seven = eight.without_shard("shard-3")
    before = np.asarray(eight.shard_ids)[eight.locate_points(points)]
    after = np.asarray(seven.shard_ids)[seven.locate_points(points)]
    moved = before != after
    assert np.array_equal(moved, before == "shard-3")
    assert "shard-3" not in after
    assert len(eight) == 8  # the original ring is unchanged


def test_a_shard_of_weight_two_gets_about_twice_the_share(points: UInt32Array) -> None:
    ids = [f"shard-{i}" for i in range(6)]
    ring = grow(ids, weights={"shard-5": 2.0})
    counts = dict(zip(ring.shard_ids, loads(ring, points).tolist(), strict=True))
    others = np.mean([counts[i] for i in ids[:5]])
    assert counts["shard-5"] / others == pytest.approx(2.0, rel=0.10)
    heavy = next(s for s in ring.stats().shards if s.shard_id == "shard-5")
    assert heavy.points == 512
    assert heavy.target_share == pytest.approx(2 / 7)


def test_raising_a_weight_only_moves_keys_onto_that_shard(eight: HashRing, points: UInt32Array) -> None:
    member = eight.member("shard-2")
    heavier = eight.with_member(RingMember("shard-2", 1.5, member.placement_seed))
    before = np.asarray(eight.shard_ids)[eight.locate_points(points)]
    after = np.asarray(heavier.shard_ids)[heavier.locate_points(points)]
    moved = before != after
    assert moved.any()
    assert set(after[moved].tolist()) == {"shard-2"}


@pytest.mark.parametrize("pattern", ["db-{}", "pg-shard-{:02d}", "s{}", "eu-west-{}"])
def test_placement_seeds_keep_eight_shards_even_for_other_names(pattern: str) -> None:
    ring = grow([pattern.format(i) for i in range(8)])
    assert ring.stats().max_load_ratio <= 1.10


def test_single_and_batch_lookups_agree(eight: HashRing) -> None:
    keys = [f"acct-{i}" for i in range(5000)] + ["", "é", "a" * 300]
    assert eight.locate_many(keys) == [eight.locate(k) for k in keys]
    assert eight.locate_many([]) == []


def test_a_key_past_the_last_point_wraps_to_the_first(eight: HashRing) -> None:
    first, last = int(eight.sorted_points[0]), int(eight.sorted_points[-1])
    owner_of_first = eight.shard_ids[int(eight.sorted_owners[0])]
    assert last < RING_SIZE - 1
    assert eight.locate_point(RING_SIZE - 1) == owner_of_first
    assert eight.locate_point(last + 1) == owner_of_first
    assert eight.locate_point(0) == owner_of_first
    assert eight.locate_point(first) == owner_of_first
    assert eight.locate_point(last) == eight.shard_ids[int(eight.sorted_owners[-1])]


def test_keys_hash_as_fmix32_over_crc32() -> None:
    # Reference values of the murmur3 finalizer.
    assert fmix32(0) == 0
    assert fmix32(1) == 0x514E28B7
    assert key_point("acct-1") == fmix32(zlib.crc32(b"acct-1"))
    sample = np.random.default_rng(5).integers(0, RING_SIZE, 10_000, dtype=np.uint64).astype(np.uint32)
    assert fmix32_array(sample).tolist() == [fmix32(int(v)) for v in sample]


def test_same_key_same_shard_in_another_process(eight: HashRing) -> None:
    keys = [f"acct-{i}" for i in range(2000)]
    script = (
        "import json, sys\n"
        "from servers.sharding.ring import HashRing, RingMember\n"
        "members = [RingMember(s, w, p) for s, w, p in json.loads(sys.argv[1])]\n"
        "ring = HashRing(members)\n"
        "print(json.dumps([ring.locate(f'acct-{i}') for i in range(2000)]))\n"
    )
    members = json.dumps([[m.shard_id, m.weight, m.placement_seed] for m in eight.members])
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, members], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(out.stdout) == eight.locate_many(keys)


def test_member_order_does_not_change_the_ring(eight: HashRing) -> None:
    shuffled = HashRing(reversed(eight.members))
    assert shuffled == eight
    assert np.array_equal(shuffled.sorted_points, eight.sorted_points)


def test_empty_ring_refuses_lookups() -> None:
    ring = HashRing()
    for lookup in (lambda: ring.locate("a"), lambda: ring.locate_many(["a"]), lambda: ring.locate_point(1)):
        with pytest.raises(FailedPrecondition) as caught:
            lookup()
        assert caught.value.reason == "NO_SHARDS"
    assert ring.stats().shards == ()
    assert ring.stats().max_load_ratio == 1.0


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: RingMember("a", 0.0), "weight"),
        (lambda: RingMember("a", -1.0), "weight"),
        (lambda: RingMember("a", math.nan), "weight"),
        (lambda: RingMember("a", math.inf), "weight"),
        (lambda: RingMember("a", 65.0), "weight"),
        (lambda: RingMember(""), "shard_id"),
        (lambda: RingMember("Shard_1"), "shard_id"),
        (lambda: RingMember("a#1"), "shard_id"),
        (lambda: RingMember("a", 1.0, -1), "placement_seed"),
        (lambda: HashRing([RingMember("a"), RingMember("a", 2.0)]), "shard_id"),
        (lambda: HashRing(vnodes_per_shard=0), "vnodes_per_shard"),
        (lambda: HashRing().locate_point(RING_SIZE), "point"),
        (lambda: choose_placement_seed(HashRing(), "a", candidates=0), "candidates"),
    ],
)
def test_bad_ring_input_names_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make()
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert caught.value.metadata["field"] == field


def test_ring_membership_errors(eight: HashRing) -> None:
    with pytest.raises(NotFound) as missing:
        eight.without_shard("shard-99")
    assert missing.value.reason == "SHARD_NOT_FOUND"
    with pytest.raises(AlreadyExists) as taken:
        choose_placement_seed(eight, "shard-1")
    assert taken.value.reason == "SHARD_EXISTS"
