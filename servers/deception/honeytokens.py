"""Honeytokens: fake credentials shaped like the mesh's real ones, and the registry that recognises them.

A honeytoken is minted with its secret, handed out once (planted in synthetic data or given to
an operator) and registered only as a fingerprint: SHA-256 over a domain tag and the secret,
never the secret itself. Any service that sees a credential fail can compute the same
`credential_fingerprint` and ask; a match names the batch the credential came from, which is
what the high-severity alert reports.

Shapes follow the token service: client ids `svc-<name>-<6 hex>` (they satisfy its client-id
rule), client secrets and API keys `secrets.token_urlsafe(32)` (43 base64url characters),
bearer tokens `v4.public.` PASETOs with a `{"kid": "k4.pid..."}` footer and the mesh's claims.
A bearer honeytoken carries random bytes where the signature goes and a key id no one
publishes, so it can never verify anywhere.
"""

from __future__ import annotations

import base64
import enum
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from clients.deception import credential_fingerprint
from servers.mesh.errors import AlreadyExists, InvalidArgument, NotFound

SECRET_BYTES = 32
"""Random bytes of a client secret or API key (as the token service's secrets)."""

MAX_MINT = 1000
"""Most honeytokens one call mints."""

MAX_CREDENTIAL_LENGTH = 8192
"""Longest presented credential that is fingerprinted; longer ones cannot be honeytokens."""

_BASE64URL = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

# Names a real mesh gives its workloads; a client id is `svc-<name>-<6 hex>`.
_SERVICE_NAMES = (
    "billing", "payments", "ledger", "invoicing", "reporting", "analytics", "etl", "backup", "archiver",
    "exporter", "scheduler", "notifier", "mailer", "search", "indexer", "gateway", "edge", "ingest",
    "audit", "metrics", "alerting", "deploy", "ci-runner", "migrations", "reconciler", "settlement",
    "fraud-scoring", "risk", "kyc", "payouts", "statements", "sync", "webhooks", "crm-sync",
)  # fmt: skip
_SCOPES = (
    "credits.read", "credits.write", "sharding.read", "deployment.read", "deployment.write",
    "compliance.read", "deception.read", "tokens.read",
)  # fmt: skip
_PASSWORD_WORDS = (
    "harbor", "maple", "falcon", "winter", "summer", "autumn", "river", "silver", "copper", "orange",
    "thunder", "meadow", "canyon", "cedar", "willow", "sparrow", "granite", "lantern", "compass",
    "anchor", "velvet", "crimson", "marble", "saddle", "tundra", "monsoon", "pepper", "walnut",
    "juniper", "harvest", "beacon", "quartz", "sierra", "delta", "bravo", "tango", "phoenix",
    "galaxy", "rocket", "dragon", "tiger", "panther", "eagle", "hunter", "ranger", "pirate",
    "football", "baseball", "soccer", "hockey", "guitar", "piano", "coffee", "chocolate", "pumpkin",
    "sunshine", "rainbow", "shadow", "mustang", "corvette", "yankees", "dolphins", "liverpool",
)  # fmt: skip
_PASSWORD_SEPARATORS = ("", "", ".", "-", "_", "!", "@")
_PASSWORD_SYMBOLS = ("", "!", "!", "?", "#", "$", "*", "!!")


class HoneytokenKind(enum.Enum):
    """The kind of secret a honeytoken imitates; the value is the contract's HoneytokenKind number."""

    API_KEY = 1
    PASSWORD = 2
    BEARER_TOKEN = 3


def _base64url(raw: NDArray[np.uint8]) -> NDArray[np.bytes_]:
    """Unpadded base64url of each row of `raw`, vectorised over rows."""
    rows, width = raw.shape
    padded = np.zeros((rows, -(-width // 3) * 3), dtype=np.uint32)
    padded[:, :width] = raw
    groups = padded.reshape(rows, -1, 3)
    word = groups[:, :, 0] << 16 | groups[:, :, 1] << 8 | groups[:, :, 2]
    sextets = np.stack([(word >> shift) & 63 for shift in (18, 12, 6, 0)], axis=2).reshape(rows, -1)
    length = -(-width * 4 // 3)
    encoded = np.ascontiguousarray(_BASE64URL[sextets[:, :length]])
    return encoded.view(f"S{length}").ravel()


def urlsafe_secrets(rng: np.random.Generator, size: int) -> NDArray[np.str_]:
    """`size` secrets shaped like `secrets.token_urlsafe(32)` (43 characters), from `rng`."""
    raw = rng.integers(0, 256, (size, SECRET_BYTES), dtype=np.uint8)
    return _base64url(raw).astype("U43")


def client_ids(rng: np.random.Generator, size: int) -> list[str]:
    """`size` workload client ids, `svc-<name>-<6 hex>`."""
    names = rng.choice(len(_SERVICE_NAMES), size)
    suffix = rng.integers(0, 2**24, size)
    return [f"svc-{_SERVICE_NAMES[n]}-{s:06x}" for n, s in zip(names.tolist(), suffix.tolist(), strict=True)]


def passwords(rng: np.random.Generator, size: int) -> list[str]:
    """`size` passwords of the kind people choose (two words, digits, a symbol), ~30 bits each."""
    result = []
    for _ in range(size):
        first, second = rng.choice(len(_PASSWORD_WORDS), 2, replace=False).tolist()
        digits = str(int(rng.integers(10, 10_000)))
        separator = _PASSWORD_SEPARATORS[int(rng.integers(len(_PASSWORD_SEPARATORS)))]
        symbol = _PASSWORD_SYMBOLS[int(rng.integers(len(_PASSWORD_SYMBOLS)))]
        result.append(f"{_PASSWORD_WORDS[first].title()}{separator}{_PASSWORD_WORDS[second]}{digits}{symbol}")
    return result


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def bearer_token(rng: np.random.Generator, subject: str, issued_at: datetime) -> str:
    """A `v4.public.` token with the mesh's claims for `subject`; its signature is random bytes."""
    issued = issued_at.astimezone(UTC).replace(microsecond=0)
    scopes = sorted(_SCOPES[i] for i in rng.choice(len(_SCOPES), int(rng.integers(1, 4)), replace=False).tolist())
    claims = {
        "iss": "shieldx-tokens",
        "sub": subject,
        "aud": "shieldx",
        "exp": (issued + timedelta(minutes=15)).isoformat(),
        "nbf": issued.isoformat(),
        "iat": issued.isoformat(),
        "jti": _b64url(rng.bytes(16)),
        "scope": " ".join(scopes),
        "client_id": subject,
    }
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    footer = json.dumps({"kid": "k4.pid." + _b64url(rng.bytes(33))}, separators=(",", ":")).encode("ascii")
    return f"v4.public.{_b64url(payload + rng.bytes(64))}.{_b64url(footer)}"


def honeytoken_ids(rng: np.random.Generator, size: int) -> list[str]:
    """`size` honeytoken ids, `ht_<16 hex>`."""
    raw = rng.integers(0, 256, (size, 8), dtype=np.uint8)
    digits = np.empty((size, 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 15]
    return ["ht_" + row.decode("ascii") for row in digits.view("S16").ravel().tolist()]


@dataclass(frozen=True)
class Honeytoken:
    """A freshly minted honeytoken, secret included: give it out once, register its `record()`."""

    honeytoken_id: str
    """Unique id, `ht_<16 hex>`."""
    kind: HoneytokenKind
    """What it imitates."""
    username: str
    """The client id (API key, bearer token), user name (password) or account it was planted in."""
    secret: str
    """The credential itself."""
    batch_id: str
    """The synthetic data batch or mint batch it belongs to."""
    row_index: int
    """Row of the batch it was planted in; -1 if it was not planted in rows."""
    create_time: datetime
    """When it was minted."""

    def record(self) -> HoneytokenRecord:
        """What the registry keeps: everything but the secret, plus the secret's fingerprint."""
        return HoneytokenRecord(
            honeytoken_id=self.honeytoken_id,
            kind=self.kind,
            username=self.username,
            batch_id=self.batch_id,
            row_index=self.row_index,
            create_time=self.create_time,
            fingerprint=credential_fingerprint(self.secret),
        )


@dataclass(frozen=True)
class HoneytokenRecord:
    """A registered honeytoken without its secret (safe to store and to log)."""

    honeytoken_id: str
    """Unique id."""
    kind: HoneytokenKind
    """What it imitates."""
    username: str
    """Client id, user name or account it goes with."""
    batch_id: str
    """The batch it belongs to; named in the alert."""
    row_index: int
    """Row it was planted in, or -1."""
    create_time: datetime
    """When it was minted."""
    fingerprint: str
    """`credential_fingerprint` of the secret."""


@dataclass(frozen=True)
class HoneytokenHit:
    """A presented credential that is a registered honeytoken."""

    record: HoneytokenRecord
    """The honeytoken presented."""
    claimed_subject: str
    """The user or client the presenter claimed, as given (may differ from `record.username`)."""

    @property
    def summary(self) -> str:
        """One line for the alert."""
        return (
            f"honeytoken {self.record.honeytoken_id} ({self.record.kind.name.lower()}) from batch "
            f"{self.record.batch_id} was presented" + (f" as {self.claimed_subject!r}" if self.claimed_subject else "")
        )


class HoneytokenRegistry:
    """Fingerprints of registered honeytokens → their records. Thread-safe, in memory, pure.

    The store persists records and loads them back with `register_all`; the registry itself
    never sees or keeps a secret.
    """

    def __init__(self, records: Iterable[HoneytokenRecord] = ()) -> None:
        """A registry holding `records`."""
        self._by_fingerprint: dict[str, HoneytokenRecord] = {}
        self._by_id: dict[str, HoneytokenRecord] = {}
        self._lock = threading.Lock()
        self.register_all(records)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def register(self, record: HoneytokenRecord) -> None:
        """Add `record`; registering the same record again is a no-op.

        AlreadyExists if its id or fingerprint belongs to a different honeytoken.
        """
        self.register_all((record,))

    def register_all(self, records: Iterable[HoneytokenRecord]) -> None:
        """`register` each record, all or none: if any clashes, AlreadyExists and nothing is registered."""
        chosen = list(records)
        with self._lock:
            by_id = dict(self._by_id)
            by_fingerprint = dict(self._by_fingerprint)
            for record in chosen:
                for index, key in ((by_id, record.honeytoken_id), (by_fingerprint, record.fingerprint)):
                    existing = index.get(key)
                    if existing is not None and existing != record:
                        raise AlreadyExists("honeytoken", existing.honeytoken_id, reason="HONEYTOKEN_EXISTS")
                by_id[record.honeytoken_id] = record
                by_fingerprint[record.fingerprint] = record
            self._by_id, self._by_fingerprint = by_id, by_fingerprint

    def get(self, honeytoken_id: str) -> HoneytokenRecord:
        """The record of `honeytoken_id`; NotFound(HONEYTOKEN_NOT_FOUND) if there is none."""
        with self._lock:
            record = self._by_id.get(honeytoken_id)
        if record is None:
            raise NotFound("honeytoken", honeytoken_id, reason="HONEYTOKEN_NOT_FOUND")
        return record

    def records(self) -> list[HoneytokenRecord]:
        """All records, oldest first."""
        with self._lock:
            return sorted(self._by_id.values(), key=lambda r: (r.create_time, r.honeytoken_id))

    def match(self, presented_credential: str, claimed_subject: str = "") -> HoneytokenHit | None:
        """The hit if `presented_credential` is a registered honeytoken, else None.

        A password honeytoken only matches together with its user name, since people pick
        the same passwords independently; an API key or bearer token matches on its own,
        whoever claims it.
        """
        if not presented_credential or len(presented_credential) > MAX_CREDENTIAL_LENGTH:
            return None
        return self.match_fingerprint(credential_fingerprint(presented_credential), claimed_subject)

    def match_fingerprint(self, fingerprint: str, claimed_subject: str = "") -> HoneytokenHit | None:
        """As `match`, for a caller that sent `credential_fingerprint(...)` instead of the credential."""
        with self._lock:
            record = self._by_fingerprint.get(fingerprint.lower())
        if record is None:
            return None
        if record.kind is HoneytokenKind.PASSWORD and claimed_subject != record.username:
            return None
        return HoneytokenHit(record, claimed_subject)


def mint_honeytokens(
    kind: HoneytokenKind,
    count: int,
    *,
    batch_id: str,
    rng: np.random.Generator,
    now: datetime,
    usernames: Iterable[str] = (),
) -> list[Honeytoken]:
    """`count` fresh honeytokens of `kind` for `batch_id`.

    Password honeytokens go with `usernames` when given (one each, in order), else with
    workload-style client ids; API keys and bearer tokens always with client ids.
    """
    if not 1 <= count <= MAX_MINT:
        raise InvalidArgument("count", f"must be between 1 and {MAX_MINT}")
    if not batch_id:
        raise InvalidArgument("batch_id", "must not be empty")
    names = list(usernames)[:count] if kind is HoneytokenKind.PASSWORD else []
    names += client_ids(rng, count - len(names))
    ids = honeytoken_ids(rng, count)
    if kind is HoneytokenKind.API_KEY:
        secrets_: list[str] = urlsafe_secrets(rng, count).tolist()
    elif kind is HoneytokenKind.PASSWORD:
        secrets_ = passwords(rng, count)
    else:
        secrets_ = [bearer_token(rng, name, now) for name in names]
    return [Honeytoken(ids[i], kind, names[i], secrets_[i], batch_id, -1, now.astimezone(UTC)) for i in range(count)]


MAX_PLANTED = 10_000
"""Most honeytokens one synthetic batch may carry."""


def honeytoken_rows(seed: int, count: int, honeytoken_count: int) -> NDArray[np.int64]:
    """The rows (ascending) of a `count`-row batch that carry honeytokens; a function of the seed only."""
    if not 0 <= honeytoken_count <= min(count, MAX_PLANTED):
        raise InvalidArgument("honeytoken_count", f"must be between 0 and min(count, {MAX_PLANTED})")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, 1)))
    rows = rng.choice(count, size=honeytoken_count, replace=False).astype(np.int64)
    rows.sort()
    return rows


def plant_in_users(
    columns: Mapping[str, NDArray[np.str_]],
    *,
    row_offset: int,
    rows: NDArray[np.int64],
    batch_id: str,
    seed: int,
    now: datetime,
) -> list[Honeytoken]:
    """The honeytokens carried by the users chunk starting at `row_offset`: its rows among `rows`.

    The `api_key` of a chosen row is its honeytoken; every other row's key has the same shape
    and is registered nowhere, so the planted ones cannot be told apart. Ids derive from the
    seed and row, so regenerating the batch yields the same tokens.
    """
    size = len(columns["api_key"])
    local = rows[(rows >= row_offset) & (rows < row_offset + size)] - row_offset
    tokens = []
    for index in local.tolist():
        row = row_offset + index
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, 2, row)))
        tokens.append(
            Honeytoken(
                honeytoken_id=honeytoken_ids(rng, 1)[0],
                kind=HoneytokenKind.API_KEY,
                username=str(columns["username"][index]),
                secret=str(columns["api_key"][index]),
                batch_id=batch_id,
                row_index=row,
                create_time=now.astimezone(UTC),
            )
        )
    return tokens
