"""IPv4 addresses that look real: private subnets for an installation, public hosts outside reserved space.

Internal addresses come from a few subnets drawn once per batch inside the RFC 1918 ranges, so
the flows of a batch show one consistent network (and no two batches share a stock layout).
External addresses are uniformly random public unicast addresses: everything in the IANA
special-purpose registry (private, loopback, link-local, CGNAT, documentation, benchmarking,
multicast, reserved) is rejected and redrawn, as are host parts ending in .0 or .255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

_RESERVED = (
    ("0.0.0.0", 8),
    ("10.0.0.0", 8),
    ("100.64.0.0", 10),
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("172.16.0.0", 12),
    ("192.0.0.0", 24),
    ("192.0.2.0", 24),
    ("192.88.99.0", 24),
    ("192.168.0.0", 16),
    ("198.18.0.0", 15),
    ("198.51.100.0", 24),
    ("203.0.113.0", 24),
    ("224.0.0.0", 4),
    ("240.0.0.0", 4),
)


def parse_ipv4(text: str) -> int:
    """The 32-bit integer of a dotted-quad address; ValueError if malformed."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise ValueError(f"not an IPv4 address: {text!r}")
    value = 0
    for part in parts:
        value = value << 8 | int(part)
    return value


_RESERVED_NETWORKS = np.array([parse_ipv4(a) for a, _ in _RESERVED], dtype=np.uint32)
_RESERVED_MASKS = np.array([(0xFFFFFFFF << (32 - p)) & 0xFFFFFFFF for _, p in _RESERVED], dtype=np.uint32)
_OCTETS = np.array([str(i) for i in range(256)])


def is_reserved(addresses: NDArray[np.uint32]) -> NDArray[np.bool_]:
    """True where an address lies in a special-purpose (non-public) range."""
    masked = addresses[:, None] & _RESERVED_MASKS[None, :]
    result: NDArray[np.bool_] = (masked == _RESERVED_NETWORKS[None, :]).any(axis=1)
    return result


def _plausible_host(addresses: NDArray[np.uint32]) -> NDArray[np.bool_]:
    last = addresses & np.uint32(0xFF)
    result: NDArray[np.bool_] = (last != 0) & (last != 255)
    return result


def public_ipv4(rng: np.random.Generator, size: int) -> NDArray[np.uint32]:
    """`size` uniformly random public unicast addresses."""
    result = np.empty(size, dtype=np.uint32)
    filled = 0
    while filled < size:
        missing = size - filled
        # About 86 % of the space survives the filters, so a 25 % margin nearly always suffices.
        draws = rng.integers(0, 2**32, missing + missing // 4 + 16, dtype=np.uint32)
        keep = draws[~is_reserved(draws) & _plausible_host(draws)][:missing]
        result[filled : filled + keep.size] = keep
        filled += keep.size
    return result


def popular_hosts(rng: np.random.Generator, size: int) -> NDArray[np.uint32]:
    """`size` distinct public addresses to stand for the busy external services of a batch."""
    hosts = np.unique(public_ipv4(rng, size + size // 8 + 8))
    return rng.permutation(hosts)[:size].astype(np.uint32)


def format_ipv4(addresses: NDArray[np.uint32]) -> NDArray[np.str_]:
    """Dotted-quad strings of 32-bit addresses, elementwise."""
    text: NDArray[np.str_] = _OCTETS[(addresses >> np.uint32(24)) & np.uint32(0xFF)]
    for shift in (16, 8, 0):
        text = np.strings.add(np.strings.add(text, "."), _OCTETS[(addresses >> np.uint32(shift)) & np.uint32(0xFF)])
    return text


@dataclass(frozen=True)
class InternalNetwork:
    """The private subnets of one synthetic installation, with the share of hosts in each."""

    networks: NDArray[np.uint32]
    """Network addresses of the subnets."""
    prefix_lengths: NDArray[np.int64]
    """Prefix length of each subnet (16 to 24)."""
    cumulative_share: NDArray[np.float64]
    """Cumulative share of hosts per subnet (last entry 1)."""

    @classmethod
    def draw(cls, rng: np.random.Generator) -> InternalNetwork:
        """A typical layout: two /16s in 10/8 (servers, users), a /20 in 172.16/12, a /24 in 192.168/16."""
        first, second = rng.choice(256, size=2, replace=False)
        networks = [
            parse_ipv4(f"10.{first}.0.0"),
            parse_ipv4(f"10.{second}.0.0"),
            parse_ipv4(f"172.{16 + int(rng.integers(0, 16))}.{16 * int(rng.integers(0, 16))}.0"),
            parse_ipv4(f"192.168.{int(rng.integers(0, 256))}.0"),
        ]
        shares = np.cumsum([0.45, 0.25, 0.2, 0.1])
        shares[-1] = 1.0
        return cls(np.array(networks, dtype=np.uint32), np.array([16, 16, 20, 24]), shares)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.uint32]:
        """`size` host addresses, spread over the subnets by share; last octet never 0 or 255."""
        subnet = np.searchsorted(self.cumulative_share, rng.random(size), side="right")
        host_bits = 32 - self.prefix_lengths[subnet]
        # The bits above the last octet are uniform within the subnet; the last octet is 1..254.
        upper = rng.integers(0, 2 ** (host_bits - 8), dtype=np.int64) << 8
        last = rng.integers(1, 255, size, dtype=np.int64)
        result: NDArray[np.uint32] = (self.networks[subnet].astype(np.int64) | upper | last).astype(np.uint32)
        return result
