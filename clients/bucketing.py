"""Deterministic bucketing: MurmurHash3 x86_32 and flagd's ways of turning a hash into a bucket.

Flag splits and sticky routes both hash a key to pick one of several weighted choices. The
algorithm that maps a hash to a choice is part of the stored flag format (metadata
`bucketing`), because changing it would silently move users between variants:

- `murmur3-v3` (the default for new flags, flagd's current `fractional`, as OpenFeature's
  flagd providers evaluate it in-process): the bucketing value is any JSON value (by default
  the array `[flagKey, targetingKey]`), integral floats read as integers, hashed as canonical
  CBOR; then `bucket = (hash * total) >> 32` as in v2.
- `murmur3-v2` (flagd's previous `fractional`): `bucket = (hash * total) >> 32`, exact integer
  arithmetic; the first choice whose cumulative weight exceeds the bucket wins.
- `murmur3-v1` (flagd's legacy `fractional`): the hash read as a signed 32-bit integer,
  `abs(hash) / (2**31 - 1) * 100` compared with cumulative percentages as floats.

v1 and v2 hash the UTF-8 bytes of a string bucketing value (by default flag key followed by
targeting key) with MurmurHash3 x86_32, seed 0.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import cbor2

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_INT32_MAX = 0x7FFFFFFF


class BucketingAlgorithm(StrEnum):
    """Versions of the hash → bucket mapping, as written in flag metadata `bucketing`."""

    MURMUR3_V1 = "murmur3-v1"
    MURMUR3_V2 = "murmur3-v2"
    MURMUR3_V3 = "murmur3-v3"


DEFAULT_BUCKETING = BucketingAlgorithm.MURMUR3_V3


def cbor_key(value: Any) -> bytes:
    """`murmur3-v3`: the bytes hashed for a JSON bucketing value (canonical CBOR, integral floats
    as integers, as flagd's fractional specification says)."""
    return cbor2.dumps(_integral_as_int(value), canonical=True)


def _integral_as_int(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _integral_as_int(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_integral_as_int(item) for item in value]
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value <= 2**64 - 1:
        return int(value)
    return value


def murmur3_x86_32(data: bytes | str, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of `data` (a str is hashed as UTF-8) as an unsigned 32-bit integer."""
    raw = data.encode() if isinstance(data, str) else data
    length = len(raw)
    h = seed & _MASK
    blocks = length >> 2
    if blocks:
        for block in struct.unpack_from(f"<{blocks}I", raw):
            k = (block * _C1) & _MASK
            k = ((k << 15) | (k >> 17)) & _MASK
            h ^= (k * _C2) & _MASK
            h = ((h << 13) | (h >> 19)) & _MASK
            h = (h * 5 + 0xE6546B64) & _MASK
    tail = length & 3
    if tail:
        k = int.from_bytes(raw[length - tail :], "little")
        k = (k * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * _C2) & _MASK
    h ^= length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def scaled_bucket(hash_value: int, total_weight: int) -> int:
    """`murmur3-v2`: the hash mapped onto `[0, total_weight)` without floating point."""
    return (hash_value * total_weight) >> 32


def choose(algorithm: BucketingAlgorithm, bucketing_value: str | bytes, weights: Sequence[int]) -> int | None:
    """Index of the weighted choice `bucketing_value` falls in, or None if there is none.

    `weights` are non-negative integers; None comes back when they sum to zero (and, with
    `murmur3-v1`, for the one hash, -2**31, whose ratio exceeds 100 %, as in flagd).
    """
    total = sum(weights)
    if total <= 0:
        return None
    hash_value = murmur3_x86_32(bucketing_value)
    if algorithm is BucketingAlgorithm.MURMUR3_V1:
        return _choose_by_percentage(hash_value, weights, total)
    bucket = scaled_bucket(hash_value, total)
    end = 0
    for index, weight in enumerate(weights):
        end += weight
        if bucket < end:
            return index
    return None  # unreachable: bucket < total


def _choose_by_percentage(hash_value: int, weights: Sequence[int], total: int) -> int | None:
    signed = hash_value - 0x100000000 if hash_value > _INT32_MAX else hash_value
    bucket = abs(signed) / _INT32_MAX * 100
    end = 0.0
    for index, weight in enumerate(weights):
        end += 100 * weight / total
        if bucket < end:
            return index
    return None
