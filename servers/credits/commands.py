"""Credits ledger commands: what a caller asks of an account, its limits, and its well-formedness.

Validation here only looks at the command itself (and the time); rules that depend on the
account's state are decided in `domain.py`. Each refusal is `InvalidArgument` naming the
request field exactly as the proto spells it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from servers.credits.events import SealedPaymentReference
from servers.mesh.errors import InvalidArgument
from servers.mesh.text import check_free_text

MAX_DESCRIPTION_LENGTH = 1024
MAX_REFERENCE_LENGTH = 256
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@dataclass(frozen=True)
class LedgerLimits:
    """Bounds the ledger enforces on amounts, balances and reservations."""

    max_amount: int = 10**15
    """Largest amount of one purchase, consume, reservation, transfer or threshold."""
    max_balance: int = 10**18
    """Largest total an account may own; below 2**63 so int64 columns never overflow."""
    default_reservation_ttl: timedelta = timedelta(minutes=15)
    """Lifetime of a reservation made without `expire_time` or `ttl`."""
    max_reservation_ttl: timedelta = timedelta(days=30)
    """Longest lifetime a reservation may ask for."""
    max_open_reservations: int = 10_000
    """Open reservations one account may hold at once (bounds the account's state)."""


DEFAULT_LIMITS = LedgerLimits()


@dataclass(frozen=True, slots=True)
class Purchase:
    """Add bought credits to an account (creating it on its first purchase)."""

    account_id: str
    amount: int
    payment_reference: SealedPaymentReference
    """Sealed by `payment_refs.PaymentReferenceCipher.seal`, which validates the plaintext."""


@dataclass(frozen=True, slots=True)
class Consume:
    """Spend credits from the available balance."""

    account_id: str
    amount: int
    description: str = ""
    reference: str = ""


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hold credits until an expiry: `expire_time`, now + `ttl`, or now + the default lifetime."""

    account_id: str
    reservation_id: str
    """Chosen by the service (unique per account)."""
    amount: int
    expire_time: datetime | None = None
    ttl: timedelta | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class CommitReservation:
    """Spend `amount` of an open reservation (None: all of it) and release the rest."""

    account_id: str
    reservation_id: str
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class CancelReservation:
    """Release an open reservation."""

    account_id: str
    reservation_id: str


@dataclass(frozen=True, slots=True)
class SetThreshold:
    """Set the low-balance threshold (0 clears it)."""

    account_id: str
    threshold: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """Move credits from one account to another (decided by `decide_transfer`)."""

    transfer_id: str
    """Chosen by the service; recorded on both sides."""
    from_account_id: str
    to_account_id: str
    amount: int
    description: str = ""


AccountCommand = Purchase | Consume | Reserve | CommitReservation | CancelReservation | SetThreshold
"""Commands that concern one account (everything but `Transfer`)."""


def validate_command(command: AccountCommand, now: datetime, limits: LedgerLimits) -> None:
    """Raise InvalidArgument, naming the field, unless `command` is well formed at `now`."""
    validate_identifier(command.account_id, "account_id")
    match command:
        case Purchase():
            validate_amount(command.amount, "amount", limits)
            if not command.payment_reference.ciphertext or not command.payment_reference.lookup:
                raise InvalidArgument("payment_reference", "is required")
        case Consume():
            validate_amount(command.amount, "amount", limits)
            check_free_text(command.description, "description", MAX_DESCRIPTION_LENGTH, multiline=True)
            check_free_text(command.reference, "reference", MAX_REFERENCE_LENGTH)
        case Reserve():
            validate_identifier(command.reservation_id, "reservation_id")
            validate_amount(command.amount, "amount", limits)
            check_free_text(command.description, "description", MAX_DESCRIPTION_LENGTH, multiline=True)
            _validate_expiry(command, now, limits)
        case CommitReservation():
            validate_identifier(command.reservation_id, "reservation_id")
            if command.amount is not None:
                validate_amount(command.amount, "amount", limits)
        case CancelReservation():
            validate_identifier(command.reservation_id, "reservation_id")
        case SetThreshold():
            if type(command.threshold) is not int or not 0 <= command.threshold <= limits.max_amount:
                raise InvalidArgument("threshold", f"must be between 0 and {limits.max_amount}")


def _validate_expiry(command: Reserve, now: datetime, limits: LedgerLimits) -> None:
    longest = limits.max_reservation_ttl
    if command.expire_time is not None and command.ttl is not None:
        raise InvalidArgument("expire_time", "set expire_time or ttl, not both")
    if command.expire_time is not None:
        if command.expire_time.tzinfo is None:
            raise InvalidArgument("expire_time", "must carry a time zone")
        if command.expire_time <= now:
            raise InvalidArgument("expire_time", "must be in the future")
        if command.expire_time - now > longest:
            raise InvalidArgument("expire_time", f"must be within {longest} from now")
    if command.ttl is not None and not timedelta(0) < command.ttl <= longest:
        raise InvalidArgument("ttl", f"must be positive and at most {longest}")


def validate_amount(amount: int, field: str, limits: LedgerLimits) -> None:
    """Raise InvalidArgument(field) unless `amount` is an integer in 1..`limits.max_amount`."""
    # bool is an int subclass; True must not buy one credit.
    if type(amount) is not int:
        raise InvalidArgument(field, "must be an integer")
    if amount <= 0:
        raise InvalidArgument(field, "must be greater than 0")
    if amount > limits.max_amount:
        raise InvalidArgument(field, f"must be at most {limits.max_amount}")


def validate_identifier(value: str, field: str) -> None:
    """Raise InvalidArgument(field) unless `value` is 1-128 of [A-Za-z0-9._:@-], starting alphanumeric."""
    if not value:
        raise InvalidArgument(field, "is required")
    if _IDENTIFIER.fullmatch(value) is None:
        raise InvalidArgument(field, "must be 1-128 characters from [A-Za-z0-9._:@-], starting with a letter or digit")


def validate_transfer(command: Transfer, limits: LedgerLimits) -> None:
    """Raise InvalidArgument, naming the field, unless the transfer is well formed."""
    validate_identifier(command.from_account_id, "from_account_id")
    validate_identifier(command.to_account_id, "to_account_id")
    validate_identifier(command.transfer_id, "transfer_id")
    if command.from_account_id == command.to_account_id:
        raise InvalidArgument("to_account_id", "must differ from from_account_id")
    validate_amount(command.amount, "amount", limits)
    check_free_text(command.description, "description", MAX_DESCRIPTION_LENGTH, multiline=True)
