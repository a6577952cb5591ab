"""The deception service's vocabulary: protocols, reconnaissance stages, interactions and reports.

Everything here is plain data shared by the decoy listeners (`decoys.py`), the session book
(`sessions.py`), the alert deduplication (`alerts.py`) and attribution (`attribution.py`). The
enums' values match the numbers of the contract's enums, so the servicer converts with `int()`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from servers.mesh.errors import InvalidArgument
from servers.mesh.text import check_free_text


class Protocol(IntEnum):
    """A network protocol a decoy speaks (`shieldx.deception.v1.Protocol`)."""

    HTTP = 1
    SSH = 2
    MYSQL = 3
    REDIS = 4
    FTP = 5
    SMTP = 6

    @property
    def label(self) -> str:
        """Lower-case name used in ids and configuration, e.g. `ssh`."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int, field_name: str = "protocol") -> Protocol:
        """The protocol named by `value` (`ssh`, `SSH` or its number); InvalidArgument otherwise."""
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                raise InvalidArgument(field_name, f"unknown protocol {value}") from None
        name = str(value).strip().upper().removeprefix("PROTOCOL_")
        try:
            return cls[name]
        except KeyError:
            raise InvalidArgument(field_name, f"unknown protocol {value!r}") from None


class ReconStage(IntEnum):
    """How far an attacker got, ordered so that `max()` is the furthest stage."""

    SCAN = 1
    """Connected and left without sending anything."""
    BANNER_GRAB = 2
    """Sent a probe or read the banner, but no credentials and no exploit."""
    LOGIN_ATTEMPT = 3
    """Presented credentials."""
    EXPLOIT_ATTEMPT = 4
    """Sent a known exploit pattern."""


class ReconKind(IntEnum):
    """What another service saw when it reported reconnaissance (`ReconKind` in the contract)."""

    REVOKED_TOKEN = 1
    FORGED_TOKEN = 2
    EXPIRED_TOKEN = 3
    PERMISSION_PROBE = 4
    ENUMERATION = 5
    CREDENTIAL_PRESENTED = 6
    OTHER = 7

    @property
    def stage(self) -> ReconStage:
        """The reconnaissance stage this kind of event shows."""
        if self in (ReconKind.PERMISSION_PROBE, ReconKind.ENUMERATION, ReconKind.OTHER):
            return ReconStage.BANNER_GRAB
        return ReconStage.LOGIN_ATTEMPT


class Severity(IntEnum):
    """How urgent an alert is (`Severity` in the contract)."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def of_stage(cls, stage: ReconStage) -> Severity:
        """The severity an event at `stage` deserves."""
        if stage >= ReconStage.LOGIN_ATTEMPT:
            return cls.HIGH
        if stage == ReconStage.BANNER_GRAB:
            return cls.MEDIUM
        return cls.LOW


class AlertKind(IntEnum):
    """What raised an alert (`AlertKind` in the contract)."""

    DECOY_INTERACTION = 1
    RECON = 2
    HONEYTOKEN_USED = 3


@dataclass(frozen=True)
class Credential:
    """A credential an attacker tried."""

    username: str
    """User name; empty where the protocol has none (Redis AUTH with one argument)."""
    secret: str
    """The password, key or token as presented."""


@dataclass(frozen=True)
class Interaction:
    """One connection to a decoy, as recorded when it ends."""

    interaction_id: str
    """Unique id."""
    decoy_id: str
    """The decoy connected to."""
    protocol: Protocol
    """The decoy's protocol."""
    source_address: str
    """Client IP address."""
    source_port: int
    """Client port."""
    start_time: datetime
    """When the connection was accepted (UTC)."""
    end_time: datetime
    """When it ended (UTC)."""
    bytes_received: int
    """Bytes received from the client in total (including any beyond the read cap)."""
    received_sample: bytes
    """The first received bytes, bounded by the listener's sample size."""
    stage: ReconStage
    """The classified reconnaissance stage."""
    credentials: tuple[Credential, ...] = ()
    """Credentials tried, in order."""
    client_banner: str = ""
    """What the client said about itself: SSH identification, User-Agent, EHLO name."""
    indicators: tuple[str, ...] = ()
    """Why the stage was chosen, e.g. `path_traversal`, `sql_injection`."""
    commands: tuple[str, ...] = ()
    """Protocol commands or request lines received, bounded, for the timeline."""


@dataclass(frozen=True)
class ReconReport:
    """A reconnaissance event reported by another service (LogRecon)."""

    kind: ReconKind
    """What was seen."""
    reporting_service: str = ""
    """The reporting service, e.g. `shieldx.tokens.v1.TokenService`."""
    method: str = ""
    """The method called."""
    detail: str = ""
    """Free text for a person."""
    claimed_subject: str = ""
    """Subject or key id the presented credential claimed."""


MAX_TEXT = 4096
"""Longest free-text field accepted from callers (detail, labels, banners)."""


def require_text(
    value: str, field_name: str, *, required: bool = False, limit: int = MAX_TEXT, evidence: bool = False
) -> str:
    """`value` stripped of surrounding space; InvalidArgument if too long or (required) empty.

    Text from callers passes `check_free_text`. `evidence` is what an attacker sent, reported by
    a server (a claimed subject, a detail quoting a request): refusing it would let a bidi or
    control character hide an attack, so only NUL is refused there and the text is stored as is.
    """
    text = value.strip()
    if required and not text:
        raise InvalidArgument(field_name, "must not be empty")
    if len(text) > limit:
        raise InvalidArgument(field_name, f"must be at most {limit} characters")
    if evidence:
        if "\x00" in text:
            raise InvalidArgument(field_name, "must not contain NUL characters")
        return text
    return check_free_text(text, field_name, limit, multiline=True)


def parse_source_address(value: str, field_name: str = "source_address") -> str:
    """The canonical text form of an IPv4 or IPv6 address; InvalidArgument otherwise.

    IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack listener reports) become
    the IPv4 address, so one attacker is one source whichever socket saw them.
    """
    text = value.strip()
    if not text:
        raise InvalidArgument(field_name, "must not be empty")
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise InvalidArgument(field_name, f"{value[:64]!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def source_network(address: str) -> str:
    """The network an address is attributed to: its /24 for IPv4, its /64 for IPv6."""
    parsed = ipaddress.ip_address(parse_source_address(address))
    prefix = 24 if parsed.version == 4 else 64
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))


def require_finite(value: float, field_name: str, *, low: float, high: float) -> float:
    """`value` if it is a finite number in [low, high]; InvalidArgument otherwise."""
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(field_name, "must be a finite number")
    if not low <= value <= high:
        raise InvalidArgument(field_name, f"must be between {low} and {high}")
    return value


def time_cursor(cursor: Mapping[str, Any]) -> tuple[datetime, str]:
    """The (time, id) position a list page token carries; InvalidArgument(page_token) if it is forged."""
    try:
        moment = datetime.fromisoformat(str(cursor["t"]))
        ident = cursor["id"]
    except (KeyError, ValueError, TypeError):
        raise InvalidArgument("page_token", "is not a token this service issued") from None
    if moment.tzinfo is None or not isinstance(ident, str):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return moment, ident


def offset_cursor(cursor: Mapping[str, Any] | None, size: int) -> int:
    """The offset a page token carries (0 without one); InvalidArgument(page_token) if outside [0, size]."""
    if cursor is None:
        return 0
    offset = cursor.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= size:
        raise InvalidArgument("page_token", "is not a token this service issued")
    return offset
