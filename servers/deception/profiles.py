"""Dataset profiles: what synthetic users, transactions and network flows should look like.

A profile holds the target distribution of every column (the generator samples from it and
the quality report tests against it) plus the tables that make rows plausible: countries with
their cities, e-mail providers, devices, transaction types, common ports. Profiles are
frozen dataclasses with defaults; `validate()` refuses settings that would produce nonsense.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from servers.deception.distributions import (
    BoundedPareto,
    Categorical,
    Distribution,
    Exponential,
    Floored,
    LogNormal,
    ShiftedPoisson,
    TruncatedNormal,
    Uniform,
)
from servers.mesh.errors import InvalidArgument

MICROS_PER_SECOND = 1_000_000

DEFAULT_START_UNIX_MICROS = int(datetime(2025, 1, 6, tzinfo=UTC).timestamp()) * MICROS_PER_SECOND
"""Default anchor time of generated timelines; fixed so the same seed gives the same rows."""

# (country, weight, ((city, weight), ...)): cities weighted roughly by population so a
# country's rows concentrate where its people do.
_GEOGRAPHY: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] = (
    ("US", 30.0, (("New York", 8), ("Los Angeles", 5), ("Chicago", 4), ("Houston", 3), ("Phoenix", 2),
                  ("Seattle", 2), ("Miami", 2), ("Atlanta", 2), ("Denver", 1.5), ("Boston", 1.5))),
    ("GB", 7.0, (("London", 6), ("Manchester", 2), ("Birmingham", 2), ("Glasgow", 1.2), ("Leeds", 1),
                 ("Bristol", 1))),
    ("DE", 6.0, (("Berlin", 4), ("Hamburg", 2), ("Munich", 2), ("Cologne", 1.5), ("Frankfurt", 1.2))),
    ("IN", 6.0, (("Mumbai", 4), ("Delhi", 4), ("Bengaluru", 3), ("Hyderabad", 2), ("Chennai", 2),
                 ("Pune", 1.5))),
    ("FR", 5.0, (("Paris", 5), ("Lyon", 1.5), ("Marseille", 1.5), ("Toulouse", 1), ("Nice", 0.8))),
    ("BR", 4.0, (("Sao Paulo", 5), ("Rio de Janeiro", 3), ("Belo Horizonte", 1.2), ("Brasilia", 1.2),
                 ("Porto Alegre", 1))),
    ("CA", 4.0, (("Toronto", 4), ("Montreal", 2.5), ("Vancouver", 2), ("Calgary", 1.2), ("Ottawa", 1))),
    ("JP", 4.0, (("Tokyo", 6), ("Osaka", 2.5), ("Yokohama", 2), ("Nagoya", 1.5), ("Sapporo", 1))),
    ("CN", 4.0, (("Shanghai", 4), ("Beijing", 4), ("Shenzhen", 3), ("Guangzhou", 3), ("Chengdu", 2))),
    ("AU", 3.0, (("Sydney", 4), ("Melbourne", 4), ("Brisbane", 2), ("Perth", 1.5), ("Adelaide", 1))),
    ("ES", 3.0, (("Madrid", 4), ("Barcelona", 3.5), ("Valencia", 1.5), ("Seville", 1.2), ("Bilbao", 0.8))),
    ("IT", 3.0, (("Rome", 3), ("Milan", 3), ("Naples", 1.5), ("Turin", 1.5), ("Florence", 1))),
    ("MX", 3.0, (("Mexico City", 5), ("Guadalajara", 2), ("Monterrey", 2), ("Puebla", 1))),
    ("NL", 2.5, (("Amsterdam", 3), ("Rotterdam", 2), ("The Hague", 1.5), ("Utrecht", 1.2),
                 ("Eindhoven", 0.8))),
    ("KR", 2.0, (("Seoul", 5), ("Busan", 1.5), ("Incheon", 1.2), ("Daegu", 1))),
    ("PL", 2.0, (("Warsaw", 3), ("Krakow", 1.5), ("Wroclaw", 1.2), ("Gdansk", 1), ("Poznan", 1))),
    ("SE", 1.5, (("Stockholm", 3), ("Gothenburg", 1.5), ("Malmo", 1))),
    ("SG", 1.5, (("Singapore", 1),)),
    ("NG", 1.5, (("Lagos", 4), ("Abuja", 1.5), ("Ibadan", 1), ("Port Harcourt", 1))),
    ("TR", 1.5, (("Istanbul", 5), ("Ankara", 2), ("Izmir", 1.5))),
    ("CH", 1.3, (("Zurich", 2), ("Geneva", 1.5), ("Basel", 1), ("Bern", 0.8))),
    ("ZA", 1.2, (("Johannesburg", 3), ("Cape Town", 2.5), ("Durban", 1.5), ("Pretoria", 1.2))),
    ("AE", 1.0, (("Dubai", 3), ("Abu Dhabi", 1.5), ("Sharjah", 1))),
    ("IE", 1.0, (("Dublin", 3), ("Cork", 1), ("Galway", 0.5))),
)  # fmt: skip


def _countries() -> Categorical:
    return Categorical(tuple(c for c, _, _ in _GEOGRAPHY), tuple(w for _, w, _ in _GEOGRAPHY))


def _places() -> Categorical:
    """Joint (country, city) weights, labelled `CC/City`: one draw gives a consistent pair."""
    labels: list[str] = []
    weights: list[float] = []
    for country, country_weight, cities in _GEOGRAPHY:
        city_total = sum(w for _, w in cities)
        for city, city_weight in cities:
            labels.append(f"{country}/{city}")
            weights.append(country_weight * city_weight / city_total)
    return Categorical(tuple(labels), tuple(weights))


def _email_domains() -> Categorical:
    domains = {
        "gmail.com": 38.0, "yahoo.com": 9.0, "outlook.com": 9.0, "hotmail.com": 7.0, "icloud.com": 7.0,
        "live.com": 2.0, "gmx.de": 2.0, "qq.com": 2.0, "proton.me": 2.0, "aol.com": 1.5, "web.de": 1.5,
        "yahoo.co.uk": 1.5, "me.com": 1.5, "mail.ru": 1.5, "comcast.net": 1.5, "yandex.ru": 1.2,
        "163.com": 1.2, "orange.fr": 1.0, "fastmail.com": 0.6, "zoho.com": 0.5,
    }  # fmt: skip
    return Categorical(tuple(domains), tuple(domains.values()))


def _tcp_ports() -> Categorical:
    ports = {
        443: 40.0, 80: 14.0, 22: 5.0, 8080: 4.0, 8443: 4.0, 445: 4.0, 3389: 3.0, 3306: 3.0, 5432: 3.0,
        25: 2.0, 587: 2.0, 993: 2.0, 6379: 2.0, 53: 2.0, 9092: 1.5, 27017: 1.0, 9200: 1.0, 389: 1.0,
        636: 1.0, 5985: 1.0, 1433: 1.0, 21: 1.0, 2049: 1.0, 110: 0.5, 143: 0.5,
    }  # fmt: skip
    return Categorical(tuple(str(p) for p in ports), tuple(ports.values()))


def _udp_ports() -> Categorical:
    ports = {
        53: 50.0, 443: 18.0, 123: 10.0, 161: 4.0, 514: 4.0, 67: 3.0, 68: 2.0, 500: 2.0, 4500: 2.0,
        5353: 2.0, 1194: 1.0, 1900: 1.0, 137: 1.0,
    }  # fmt: skip
    return Categorical(tuple(str(p) for p in ports), tuple(ports.values()))


# Default target distributions (frozen values, shared safely by every profile).
DEFAULT_AGE = TruncatedNormal(mean=35.0, std=15.0, low=18.0, high=91.0)
DEFAULT_LOGIN_FREQUENCY = Exponential(scale=4.0)
DEFAULT_SESSION_DURATION = LogNormal(mu=math.log(420.0), sigma=1.0)
DEFAULT_DEVICES = Categorical(("mobile", "desktop", "tablet", "smart_tv"), (47, 41, 9, 3))
DEFAULT_AMOUNT = BoundedPareto(shape=1.16, scale=500.0, upper=100_000_000.0)
DEFAULT_TRANSACTION_TYPES = Categorical(
    ("purchase", "transfer", "withdrawal", "deposit", "refund", "subscription"), (70, 11, 7, 5, 4, 3)
)
DEFAULT_FRAUD_SCORE = Exponential(scale=0.05, upper=1.0)
DEFAULT_PROTOCOLS = Categorical(("tcp", "udp", "icmp"), (70, 25, 5))
DEFAULT_FLOW_BYTES = LogNormal(mu=math.log(4500.0), sigma=1.6)
DEFAULT_FLOW_PACKETS = ShiftedPoisson(lam=11.0, shift=1)
DEFAULT_FLOW_DURATION = LogNormal(mu=math.log(1200.0), sigma=1.8)
DEFAULT_DIRECTIONS = Categorical(("outbound", "inbound", "internal"), (55, 15, 30))


@dataclass(frozen=True)
class ColumnTarget:
    """What one column of a chunk is tested against in the quality report."""

    column: str
    """Column name, as in the chunk (for `email`, the domain part is tested)."""
    target: Distribution | Categorical
    """Numeric target (KS test) or categorical target (total variation)."""
    values: tuple[str | int, ...] | None = None
    """For categorical targets stored as codes: the column value of each label, in label order."""
    domain_part: bool = False
    """True if the column holds e-mail addresses and only their domain is tested."""


def _require_positive(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(name, "must be a positive finite number")


@dataclass(frozen=True)
class UserProfile:
    """How synthetic user accounts are distributed."""

    age: TruncatedNormal = DEFAULT_AGE
    """Age in years before flooring: Normal(35, 15) restricted to adults 18..90."""
    login_frequency: Exponential = DEFAULT_LOGIN_FREQUENCY
    """Logins per week (mean 4)."""
    session_duration_seconds: LogNormal = DEFAULT_SESSION_DURATION
    """Mean session length in seconds (median 7 minutes)."""
    preferred_device: Categorical = DEFAULT_DEVICES
    """Device the user mostly signs in from."""
    country: Categorical = field(default_factory=_countries)
    """Country of residence (ISO 3166-1 alpha-2)."""
    email_domain: Categorical = field(default_factory=_email_domains)
    """Mail providers of the e-mail addresses."""
    email_digits_share: float = 0.2
    """Share of addresses whose local part is the username plus two digits."""
    email_dots_share: float = 0.15
    """Share of addresses whose local part has the username's `_` and `-` turned into dots."""
    signup_window_days: int = 5 * 365
    """Accounts were created uniformly within this many days before `start_unix_micros`."""
    start_unix_micros: int = DEFAULT_START_UNIX_MICROS
    """Anchor time: the newest possible sign-up."""

    def validate(self) -> None:
        """InvalidArgument for settings that cannot produce sensible rows."""
        if not 0 <= self.email_digits_share + self.email_dots_share <= 1:
            raise InvalidArgument("email_digits_share", "e-mail variant shares must sum to at most 1")
        if self.signup_window_days <= 0:
            raise InvalidArgument("signup_window_days", "must be positive")

    def signup_window(self) -> Uniform:
        """Sign-up times in microseconds since the epoch (floored to whole microseconds)."""
        window = self.signup_window_days * 86_400 * MICROS_PER_SECOND
        return Uniform(float(self.start_unix_micros - window), float(self.start_unix_micros))

    def targets(self, row_offset: int, row_count: int) -> tuple[ColumnTarget, ...]:
        """The tested columns of users rows (the same for every chunk)."""
        del row_offset, row_count
        return (
            ColumnTarget("age", Floored(self.age)),
            ColumnTarget("login_frequency", self.login_frequency),
            ColumnTarget("session_duration_seconds", self.session_duration_seconds),
            ColumnTarget("preferred_device", self.preferred_device),
            ColumnTarget("country", self.country),
            ColumnTarget("email", self.email_domain, domain_part=True),
            ColumnTarget("create_time_unix_micros", Floored(self.signup_window())),
        )


@dataclass(frozen=True)
class TransactionProfile:
    """How synthetic card and account transactions are distributed."""

    amount_minor: BoundedPareto = DEFAULT_AMOUNT
    """Amount in cents before flooring: Pareto 80/20 from 5.00 up to 1,000,000.00."""
    currency: str = "USD"
    """ISO 4217 settlement currency of every amount."""
    transaction_type: Categorical = DEFAULT_TRANSACTION_TYPES
    """Kinds of transaction."""
    fraud_score: Exponential = DEFAULT_FRAUD_SCORE
    """Model fraud score: Exponential with mean 0.05, clipped to 1."""
    place: Categorical = field(default_factory=_places)
    """Joint (country, city) weights; labels are `CC/City`."""
    merchant_pool_size: int = 2000
    """Distinct merchants per batch (Markov names drawn once per batch)."""
    merchant_popularity: float = 1.0
    """Zipf exponent of merchant popularity (0: all merchants equally busy)."""
    user_population: int = 100_000
    """Users transactions are spread over; ids match the users data set of the same seed."""
    user_activity_skew: float = 2.0
    """Power applied to a uniform draw of the user index; above 1 makes some users busier."""
    rate_per_second: float = 50.0
    """Mean transactions per second of the timeline (arrivals are a Poisson process)."""
    start_unix_micros: int = DEFAULT_START_UNIX_MICROS
    """Time of the first possible transaction."""

    def validate(self) -> None:
        """InvalidArgument for settings that cannot produce sensible rows."""
        if not (len(self.currency) == 3 and self.currency.isascii() and self.currency.isupper()):
            raise InvalidArgument("currency", "must be an ISO 4217 code such as USD")
        if self.merchant_pool_size < 1:
            raise InvalidArgument("merchant_pool_size", "must be at least 1")
        if self.user_population < 1:
            raise InvalidArgument("user_population", "must be at least 1")
        _require_positive(self.rate_per_second, "rate_per_second")
        _require_positive(self.user_activity_skew, "user_activity_skew")
        if not (math.isfinite(self.merchant_popularity) and self.merchant_popularity >= 0):
            raise InvalidArgument("merchant_popularity", "must be a non-negative finite number")

    def country(self) -> Categorical:
        """Marginal country weights implied by `place`."""
        return _marginal(self.place, lambda label: label.split("/", 1)[0])

    def city(self) -> Categorical:
        """Marginal city weights implied by `place`."""
        return _marginal(self.place, lambda label: label.split("/", 1)[1])

    def time_window(self, row_offset: int, row_count: int) -> Uniform:
        """The span of microseconds rows [row_offset, row_offset + row_count) fall into."""
        micros_per_row = MICROS_PER_SECOND / self.rate_per_second
        low = self.start_unix_micros + row_offset * micros_per_row
        return Uniform(low, low + row_count * micros_per_row)

    def targets(self, row_offset: int, row_count: int) -> tuple[ColumnTarget, ...]:
        """The tested columns of transaction rows [row_offset, row_offset + row_count)."""
        return (
            ColumnTarget("amount_minor", Floored(self.amount_minor)),
            ColumnTarget("transaction_type", self.transaction_type),
            ColumnTarget("fraud_score", self.fraud_score),
            ColumnTarget("country", self.country()),
            ColumnTarget("city", self.city()),
            ColumnTarget("time_unix_micros", Floored(self.time_window(row_offset, row_count))),
        )


FLOW_PROTOCOL_CODES = {"tcp": 1, "udp": 2, "icmp": 3}
"""FlowProtocol enum values of the contract, by protocol name."""


@dataclass(frozen=True)
class NetworkFlowProfile:
    """How synthetic network flow records are distributed."""

    protocol: Categorical = DEFAULT_PROTOCOLS
    """Transport protocol shares."""
    tcp_ports: Categorical = field(default_factory=_tcp_ports)
    """Destination ports of TCP flows (labels are port numbers)."""
    udp_ports: Categorical = field(default_factory=_udp_ports)
    """Destination ports of UDP flows (labels are port numbers)."""
    bytes: LogNormal = DEFAULT_FLOW_BYTES
    """Bytes per flow before flooring (median 4.5 kB)."""
    packets: ShiftedPoisson = DEFAULT_FLOW_PACKETS
    """Packets per flow: 1 + Poisson(11)."""
    duration_millis: LogNormal = DEFAULT_FLOW_DURATION
    """Flow duration in milliseconds (median 1.2 s)."""
    correlation: float = 0.8
    """Gaussian-copula correlation between bytes, packets and duration (marginals stay exact)."""
    direction: Categorical = DEFAULT_DIRECTIONS
    """Flow direction: internal host to the internet, the internet to a host, host to host."""
    popular_share: float = 0.65
    """Share of external endpoints drawn from the batch's pool of popular hosts."""
    popular_pool_size: int = 1024
    """Popular external hosts per batch (CDNs, SaaS, resolvers)."""
    rate_per_second: float = 2000.0
    """Mean flows per second of the timeline."""
    start_unix_micros: int = DEFAULT_START_UNIX_MICROS
    """Time of the first possible flow."""

    def validate(self) -> None:
        """InvalidArgument for settings that cannot produce sensible rows."""
        if not (math.isfinite(self.correlation) and 0 <= self.correlation < 1):
            raise InvalidArgument("correlation", "must be in [0, 1)")
        if not 0 <= self.popular_share <= 1:
            raise InvalidArgument("popular_share", "must be in [0, 1]")
        if self.popular_pool_size < 1:
            raise InvalidArgument("popular_pool_size", "must be at least 1")
        _require_positive(self.rate_per_second, "rate_per_second")
        if set(self.protocol.labels) != set(FLOW_PROTOCOL_CODES):
            raise InvalidArgument("protocol", "labels must be exactly tcp, udp and icmp")

    def destination_port(self) -> Categorical:
        """Marginal destination-port weights: protocol share times port share (ICMP has port 0)."""
        shares = dict(zip(self.protocol.labels, self.protocol.probabilities.tolist(), strict=True))
        weights: dict[str, float] = {}
        for protocol, ports in (("tcp", self.tcp_ports), ("udp", self.udp_ports)):
            for port, p in zip(ports.labels, ports.probabilities.tolist(), strict=True):
                weights[port] = weights.get(port, 0.0) + shares[protocol] * p
        weights["0"] = weights.get("0", 0.0) + shares["icmp"]
        return Categorical(tuple(weights), tuple(weights.values()))

    def time_window(self, row_offset: int, row_count: int) -> Uniform:
        """The span of microseconds rows [row_offset, row_offset + row_count) fall into."""
        micros_per_row = MICROS_PER_SECOND / self.rate_per_second
        low = self.start_unix_micros + row_offset * micros_per_row
        return Uniform(low, low + row_count * micros_per_row)

    def targets(self, row_offset: int, row_count: int) -> tuple[ColumnTarget, ...]:
        """The tested columns of flow rows [row_offset, row_offset + row_count)."""
        ports = self.destination_port()
        return (
            ColumnTarget("protocol", self.protocol, values=tuple(FLOW_PROTOCOL_CODES[p] for p in self.protocol.labels)),
            ColumnTarget("destination_port", ports, values=tuple(int(p) for p in ports.labels)),
            ColumnTarget("bytes", Floored(self.bytes)),
            ColumnTarget("packets", self.packets),
            ColumnTarget("duration_millis", self.duration_millis),
            ColumnTarget("start_time_unix_micros", Floored(self.time_window(row_offset, row_count))),
        )


def _marginal(joint: Categorical, project: Callable[[str], str]) -> Categorical:
    weights: dict[str, float] = {}
    for label, p in zip(joint.labels, joint.probabilities.tolist(), strict=True):
        name = project(label)
        weights[name] = weights.get(name, 0.0) + p
    return Categorical(tuple(weights), tuple(weights.values()))
