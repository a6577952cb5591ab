"""Synthetic users, transactions and network flows: columnar chunks, vectorised, reproducible from a seed.

Every chunk is generated from its own child of the batch's `SeedSequence`
(`SeedSequence(seed, spawn_key=(stream, chunk_index))`, the same child `spawn` would give), so
chunk k can be regenerated alone and the same (seed, chunk size, GENERATOR_VERSION) always
gives byte-identical columns. Things that must stay the same across a batch (its merchants, its
internal subnets and popular external hosts) come from a batch-level child of the same seed.
Ids are a keyed bijection of the row index, so they never collide within a batch, and the
`user_id` of a transaction names a user of the users data set generated with the same seed.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from servers.deception.distributions import Uniform, standard_normal_cdf
from servers.deception.honeytokens import urlsafe_secrets
from servers.deception.markov import MarkovNameChain, merchant_chain, username_chain
from servers.deception.network import InternalNetwork, format_ipv4, popular_hosts, public_ipv4
from servers.deception.profiles import (
    FLOW_PROTOCOL_CODES,
    ColumnTarget,
    NetworkFlowProfile,
    TransactionProfile,
    UserProfile,
)
from servers.mesh.errors import InvalidArgument

GENERATOR_VERSION = f"shieldx-synthetic/2 numpy/{np.__version__}"
"""Version of the generator. numpy's is part of it because its samplers define the streams:
the same seed and version give byte-identical output."""

DEFAULT_CHUNK_SIZE = 10_000
"""Rows per chunk when the caller does not say."""

MAX_CHUNK_SIZE = 200_000
"""Most rows in one chunk (bounds the memory of one generation step)."""

MAX_ROW_COUNT = 1_000_000_000
"""Most rows in one batch."""

MAX_SEED = 2**64 - 1
"""Seeds are unsigned 64-bit integers (the contract's `uint64 seed`)."""


class DatasetKind(enum.Enum):
    """A kind of synthetic data set; the value is the contract's DatasetKind number."""

    USERS = 1
    TRANSACTIONS = 2
    NETWORK_FLOWS = 3


def new_seed() -> int:
    """A fresh random seed for a batch whose caller gave none (it is returned with the data)."""
    return secrets.randbits(64)


@dataclass(frozen=True)
class ChunkPlan:
    """Where one chunk sits in its batch."""

    chunk_index: int
    """Index of the chunk, from 0."""
    row_offset: int
    """Index of its first row in the batch."""
    row_count: int
    """Rows in the chunk."""
    last: bool
    """True for the batch's final chunk."""


def plan_chunks(count: int, chunk_size: int = 0) -> Iterator[ChunkPlan]:
    """The chunks of a `count`-row batch (`chunk_size` 0 means DEFAULT_CHUNK_SIZE).

    The arguments are checked at once (not on first iteration), the plans made lazily.
    """
    if not 1 <= count <= MAX_ROW_COUNT:
        raise InvalidArgument("count", f"must be between 1 and {MAX_ROW_COUNT}")
    if not 0 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument("chunk_size", f"must be between 0 (default) and {MAX_CHUNK_SIZE}")
    size = chunk_size or DEFAULT_CHUNK_SIZE
    chunks = -(-count // size)
    return (
        ChunkPlan(index, index * size, min(size, count - index * size), index == chunks - 1) for index in range(chunks)
    )


def check_seed(seed: int) -> int:
    """`seed` if it is a valid uint64, else InvalidArgument(`seed`)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidArgument("seed", "must be an integer in [0, 2^64)")
    return seed


@dataclass(frozen=True)
class SyntheticChunk:
    """One chunk of generated rows, as columns named like the contract's *Columns messages."""

    kind: DatasetKind
    """What the rows are."""
    seed: int
    """Seed of the batch's SeedSequence."""
    generator_version: str
    """GENERATOR_VERSION that made the rows."""
    plan: ChunkPlan
    """Where the chunk sits in its batch."""
    columns: Mapping[str, NDArray[Any]] = field(repr=False)
    """Column name → one numpy array per column, all of length `row_count`, in contract order."""

    @property
    def row_count(self) -> int:
        """Rows in the chunk."""
        return self.plan.row_count

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows as JSON-ready dicts (flow protocols by name, not number)."""
        names = list(self.columns)
        values = [self._json_column(name).tolist() for name in names]
        for row in zip(*values, strict=True):
            yield dict(zip(names, row, strict=True))

    def to_json_lines(self) -> bytes:
        """The rows as JSON Lines: UTF-8, keys in contract order, one object and `\\n` per row."""
        encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
        return "".join(encode(row) + "\n" for row in self.rows()).encode("utf-8")

    def content_digest(self) -> str:
        """SHA-256 over the column names, dtypes and raw bytes: equal digests, identical chunks."""
        digest = hashlib.sha256()
        for name, column in self.columns.items():
            digest.update(f"{name}:{column.dtype.str}:{column.shape[0]};".encode())
            digest.update(np.ascontiguousarray(column).tobytes())
        return digest.hexdigest()

    def _json_column(self, name: str) -> NDArray[Any]:
        column = self.columns[name]
        if self.kind is DatasetKind.NETWORK_FLOWS and name == "protocol":
            names: NDArray[np.str_] = np.array(["unspecified", *FLOW_PROTOCOL_CODES])[column]
            return names
        return column


# The two UTF-32 code points of each byte's hex pair, packed in one uint64 so one gather writes both.
_HEX_PAIRS = np.frombuffer("".join(f"{i:02x}" for i in range(256)).encode("utf-32-le"), dtype=np.uint64)
_TWO_DIGITS = np.array([f"{i:02d}" for i in range(100)])
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _mix(index: NDArray[np.int64], key: np.uint64) -> NDArray[np.uint64]:
    """SplitMix64's finaliser of index XOR key: a bijection, so distinct rows get distinct ids."""
    x = index.astype(np.uint64) ^ key
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    result: NDArray[np.uint64] = x ^ (x >> np.uint64(31))
    return result


def _hex_ids(prefix: str, values: NDArray[np.uint64]) -> NDArray[np.str_]:
    """`prefix` followed by the 16 lower-case hex digits of each value, built without a Python loop.

    The characters are written as UTF-32 code points straight into the buffer of a unicode
    array, so no per-string object or decoding step is involved.
    """
    head = np.frombuffer(prefix.encode("utf-32-le"), dtype=np.uint32)
    width = head.size + 16
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    out = np.empty((values.size, width), dtype=np.uint32)
    out[:, : head.size] = head
    out[:, head.size :] = np.take(_HEX_PAIRS, octets).view(np.uint32).reshape(values.size, 16)
    return out.view(f"<U{width}").ravel()


def _sorted_times(window: Uniform, rng: np.random.Generator, size: int) -> NDArray[np.int64]:
    """Arrival times of a Poisson process in `window`, in order: sorted uniform draws, floored."""
    times: NDArray[np.int64] = np.floor(window.sample(rng, size)).astype(np.int64)
    times.sort()
    return times


@dataclass(frozen=True)
class _TransactionConstants:
    merchants: NDArray[np.str_]
    popularity: NDArray[np.float64]


@dataclass(frozen=True)
class _FlowConstants:
    internal: InternalNetwork
    popular: NDArray[np.uint32]
    popularity: NDArray[np.float64]


class SyntheticDataGenerator:
    """Generates chunks of users, transactions or network flows from a seed.

    Thread-safe: chunks share nothing mutable except a small cache of per-batch constants.
    """

    def __init__(
        self,
        *,
        users: UserProfile | None = None,
        transactions: TransactionProfile | None = None,
        network_flows: NetworkFlowProfile | None = None,
        usernames: MarkovNameChain | None = None,
        merchants: MarkovNameChain | None = None,
    ) -> None:
        """Profiles default to the documented distributions; chains to the shipped corpora."""
        self.users = users or UserProfile()
        """How users are distributed."""
        self.transactions = transactions or TransactionProfile()
        """How transactions are distributed."""
        self.network_flows = network_flows or NetworkFlowProfile()
        """How network flows are distributed."""
        for profile in (self.users, self.transactions, self.network_flows):
            profile.validate()
        self._usernames = usernames or username_chain()
        self._merchants = merchants or merchant_chain()
        self._constants: OrderedDict[tuple[DatasetKind, int], object] = OrderedDict()
        self._lock = threading.Lock()
        places = self.transactions.place.labels
        self._place_country = np.array([label.split("/", 1)[0] for label in places])
        self._place_city = np.array([label.split("/", 1)[1] for label in places])

    def targets(self, kind: DatasetKind, row_offset: int, row_count: int) -> tuple[ColumnTarget, ...]:
        """What the quality report tests rows [row_offset, row_offset + row_count) of `kind` against."""
        if kind is DatasetKind.USERS:
            return self.users.targets(row_offset, row_count)
        if kind is DatasetKind.TRANSACTIONS:
            return self.transactions.targets(row_offset, row_count)
        return self.network_flows.targets(row_offset, row_count)

    def generate(self, kind: DatasetKind, seed: int, count: int, chunk_size: int = 0) -> Iterator[SyntheticChunk]:
        """All chunks of a `count`-row batch, in order; arguments are checked before it returns."""
        check_seed(seed)
        plans = plan_chunks(count, chunk_size)
        return (self.generate_chunk(kind, seed, plan) for plan in plans)

    def generate_chunk(self, kind: DatasetKind, seed: int, plan: ChunkPlan) -> SyntheticChunk:
        """One chunk; depends only on (kind, seed, plan), never on other chunks."""
        check_seed(seed)
        if plan.row_count < 1 or plan.row_count > MAX_CHUNK_SIZE:
            raise InvalidArgument("chunk_size", f"must be between 1 and {MAX_CHUNK_SIZE}")
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(kind.value, plan.chunk_index)))
        make: dict[DatasetKind, Callable[[int, np.random.Generator, ChunkPlan], dict[str, NDArray[Any]]]] = {
            DatasetKind.USERS: self._user_columns,
            DatasetKind.TRANSACTIONS: self._transaction_columns,
            DatasetKind.NETWORK_FLOWS: self._flow_columns,
        }
        columns = make[kind](seed, rng, plan)
        return SyntheticChunk(kind, seed, GENERATOR_VERSION, plan, columns)

    def _user_columns(self, seed: int, rng: np.random.Generator, plan: ChunkPlan) -> dict[str, NDArray[Any]]:
        profile = self.users
        n = plan.row_count
        names = self._usernames.generate(n, rng)
        age = np.floor(profile.age.sample(rng, n)).astype(np.int32)
        login_frequency = profile.login_frequency.sample(rng, n)
        session_duration = profile.session_duration_seconds.sample(rng, n)
        device = profile.preferred_device.sample(rng, n)
        country = profile.country.sample(rng, n)
        domains = profile.email_domain.sample(rng, n)
        variant = rng.random(n)
        digits = _TWO_DIGITS[rng.integers(0, 100, n)]
        with_digits = variant < profile.email_digits_share
        dotted = ~with_digits & (variant < profile.email_digits_share + profile.email_dots_share)
        usernames, local = _unique_handles(names, plan.chunk_index, digits, with_digits, dotted)
        email = np.strings.add(np.strings.add(local, "@"), domains)
        api_key = urlsafe_secrets(rng, n)
        create_time = np.floor(profile.signup_window().sample(rng, n)).astype(np.int64)
        user_id = _hex_ids("usr_", _mix(plan.row_offset + np.arange(n, dtype=np.int64), _id_key(seed, 1)))
        return {
            "user_id": user_id,
            "username": usernames,
            "email": email,
            "age": age,
            "login_frequency": login_frequency,
            "session_duration_seconds": session_duration,
            "preferred_device": device,
            "country": country,
            "api_key": api_key,
            "create_time_unix_micros": create_time,
        }

    def _transaction_columns(self, seed: int, rng: np.random.Generator, plan: ChunkPlan) -> dict[str, NDArray[Any]]:
        profile = self.transactions
        constants = self._batch_constants(DatasetKind.TRANSACTIONS, seed)
        assert isinstance(constants, _TransactionConstants)
        n = plan.row_count
        merchant = constants.merchants[np.searchsorted(constants.popularity, rng.random(n), side="right")]
        place = profile.place.sample_index(rng, n)
        amount = np.floor(profile.amount_minor.sample(rng, n)).astype(np.int64)
        transaction_type = profile.transaction_type.sample(rng, n)
        fraud_score = profile.fraud_score.sample(rng, n)
        times = _sorted_times(profile.time_window(plan.row_offset, n), rng, n)
        user_index = np.floor(profile.user_population * rng.random(n) ** profile.user_activity_skew)
        user_id = _hex_ids("usr_", _mix(user_index.astype(np.int64), _id_key(seed, 1)))
        rows = plan.row_offset + np.arange(n, dtype=np.int64)
        return {
            "transaction_id": _hex_ids("txn_", _mix(rows, _id_key(seed, 2))),
            "user_id": user_id,
            "amount_minor": amount,
            "currency": np.full(n, profile.currency, dtype="U3"),
            "merchant": merchant,
            "transaction_type": transaction_type,
            "fraud_score": fraud_score,
            "country": self._place_country[place],
            "city": self._place_city[place],
            "time_unix_micros": times,
        }

    def _flow_columns(self, seed: int, rng: np.random.Generator, plan: ChunkPlan) -> dict[str, NDArray[Any]]:
        profile = self.network_flows
        constants = self._batch_constants(DatasetKind.NETWORK_FLOWS, seed)
        assert isinstance(constants, _FlowConstants)
        n = plan.row_count
        codes = np.array([FLOW_PROTOCOL_CODES[label] for label in profile.protocol.labels], dtype=np.int32)
        protocol = codes[profile.protocol.sample_index(rng, n)]
        tcp_ports = np.array(profile.tcp_ports.labels, dtype=np.uint32)[profile.tcp_ports.sample_index(rng, n)]
        udp_ports = np.array(profile.udp_ports.labels, dtype=np.uint32)[profile.udp_ports.sample_index(rng, n)]
        is_tcp = protocol == FLOW_PROTOCOL_CODES["tcp"]
        is_icmp = protocol == FLOW_PROTOCOL_CODES["icmp"]
        destination_port = np.where(is_tcp, tcp_ports, np.where(is_icmp, np.uint32(0), udp_ports))
        ephemeral = rng.integers(49152, 65536, n, dtype=np.uint32)
        source_port = np.where(is_icmp, np.uint32(0), ephemeral).astype(np.uint32)
        source, destination = self._flow_endpoints(constants, rng, n)
        bytes_, packets, duration = self._flow_volumes(rng, n)
        return {
            "source_address": format_ipv4(source),
            "destination_address": format_ipv4(destination),
            "source_port": source_port,
            "destination_port": destination_port.astype(np.uint32),
            "protocol": protocol,
            "bytes": bytes_,
            "packets": packets,
            "start_time_unix_micros": _sorted_times(profile.time_window(plan.row_offset, n), rng, n),
            "duration_millis": duration,
        }

    def _flow_endpoints(
        self, constants: _FlowConstants, rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
        """Source and destination addresses following each flow's direction."""
        profile = self.network_flows
        direction = np.array(profile.direction.labels)[profile.direction.sample_index(rng, n)]
        host = constants.internal.sample(rng, n)
        peer = constants.internal.sample(rng, n)
        popular = constants.popular[np.searchsorted(constants.popularity, rng.random(n), side="right")]
        external = np.where(rng.random(n) < profile.popular_share, popular, public_ipv4(rng, n))
        outbound = direction == "outbound"
        inbound = direction == "inbound"
        source = np.where(inbound, external, host)
        destination = np.where(outbound, external, np.where(inbound, host, peer))
        # Host-to-host flows between the same address are loopback traffic, never seen on the wire.
        same = ~outbound & ~inbound & (source == destination)
        # Move to the neighbouring host; the last octet stays within 1..254.
        twin = destination[same]
        destination[same] = np.where((twin & np.uint32(0xFF)) == 254, twin - np.uint32(1), twin + np.uint32(1))
        return source.astype(np.uint32), destination.astype(np.uint32)

    def _flow_volumes(
        self, rng: np.random.Generator, n: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
        """Bytes, packets and duration, correlated through a Gaussian copula with exact marginals."""
        profile = self.network_flows
        rho = profile.correlation
        covariance = np.full((3, 3), rho) + np.eye(3) * (1.0 - rho)
        z = np.linalg.cholesky(covariance) @ rng.standard_normal((3, n))
        bytes_ = np.floor(profile.bytes.from_standard_normal(z[0])).astype(np.int64)
        packets = profile.packets.quantile(standard_normal_cdf(z[1]))
        duration = profile.duration_millis.from_standard_normal(z[2])
        return bytes_, packets, duration

    def _batch_constants(self, kind: DatasetKind, seed: int) -> object:
        """Per-batch constants (merchants, subnets, popular hosts), cached for the last few seeds."""
        key = (kind, seed)
        with self._lock:
            cached = self._constants.get(key)
            if cached is not None:
                self._constants.move_to_end(key)
                return cached
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, kind.value)))
        value: object = (
            self._transaction_constants(rng) if kind is DatasetKind.TRANSACTIONS else self._flow_constants(rng)
        )
        with self._lock:
            self._constants[key] = value
            while len(self._constants) > 16:
                self._constants.popitem(last=False)
        return value

    def _transaction_constants(self, rng: np.random.Generator) -> _TransactionConstants:
        profile = self.transactions
        names = self._merchants.generate(profile.merchant_pool_size, rng)
        # Narrow the pool to its longest name: every row copies one, so width is bandwidth.
        names = names.astype(f"<U{int(np.strings.str_len(names).max())}")
        return _TransactionConstants(names, _zipf_cumulative(names.size, profile.merchant_popularity))

    def _flow_constants(self, rng: np.random.Generator) -> _FlowConstants:
        profile = self.network_flows
        internal = InternalNetwork.draw(rng)
        hosts = popular_hosts(rng, profile.popular_pool_size)
        return _FlowConstants(internal, hosts, _zipf_cumulative(hosts.size, 1.0))


def _unique_handles(
    names: NDArray[np.str_],
    chunk_index: int,
    digits: NDArray[np.str_],
    with_digits: NDArray[np.bool_],
    dotted: NDArray[np.bool_],
) -> tuple[NDArray[np.str_], NDArray[np.str_]]:
    """Usernames and e-mail local parts, each unique across the whole batch.

    A chunk's names are distinct, end with a letter and hold no dot (USERNAME_BOUNDS). Chunk 0
    uses them as they are; chunk k > 0 appends `.k`, so equal usernames would need the same
    chunk and the same name. Local parts are the username, the name plus two digits before the
    tag, or the name with `_`/`-` turned into dots before the tag; the digit count after the
    last letter tells the first two apart, and a dot form that another name of the chunk also
    reaches (`a_b`, `a-b`) falls back to the username, which holds a `_` or `-`.
    """
    tag = "" if chunk_index == 0 else f".{chunk_index}"
    width = names.dtype.itemsize // 4 + 2 + len(tag)
    local = names.astype(f"<U{width}")
    if with_digits.any():
        local[with_digits] = np.strings.add(local[with_digits], digits[with_digits])
    if dotted.any():
        dots = np.strings.replace(np.strings.replace(names[dotted], "_", "."), "-", ".")
        _, first = np.unique(dots, return_index=True)
        taken = np.zeros(dots.size, dtype=bool)
        taken[first] = True
        rows = np.flatnonzero(dotted)[taken]
        local[rows] = dots[taken]
    if not tag:
        return names, local
    return np.strings.add(names, tag), np.strings.add(local, tag)


def _zipf_cumulative(size: int, exponent: float) -> NDArray[np.float64]:
    """Cumulative popularity of ranks 1..size under Zipf(exponent)."""
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cumulative = np.cumsum(weights / weights.sum())
    cumulative[-1] = 1.0
    return cumulative


def _id_key(seed: int, stream: int) -> np.uint64:
    """Per-batch key of an id stream (1: users, 2: transactions)."""
    state = np.random.SeedSequence(seed, spawn_key=(0, 0, stream)).generate_state(1, np.uint64)
    return np.uint64(state[0])
