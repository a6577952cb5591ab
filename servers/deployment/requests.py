"""Request checks the three deployment servicers share: who is calling, resource ids, free text.

Ids and texts reach the store as query parameters; PostgreSQL refuses NUL characters in text,
so anything malformed is refused here, naming the field, before it gets that far.
"""

from __future__ import annotations

from servers.mesh.auth import current_caller
from servers.mesh.errors import InvalidArgument
from servers.mesh.text import check_free_text

MAX_ID_LENGTH = 64
"""Longest resource id (server-assigned ids are much shorter)."""


def actor() -> str:
    """Who is calling, for history and audit records."""
    return current_caller().subject


def check_id(value: str, field_name: str) -> str:
    """A resource id: printable ASCII, at most `MAX_ID_LENGTH` characters (unknown ids are NOT_FOUND later)."""
    if not value:
        raise InvalidArgument(field_name, "is required")
    if len(value) > MAX_ID_LENGTH or not value.isascii() or not value.isprintable():
        raise InvalidArgument(field_name, f"is printable ASCII, at most {MAX_ID_LENGTH} characters")
    return value


def check_text(value: str, field_name: str, max_length: int) -> str:
    """Free text for people (reasons, comments, names): at most `max_length` characters, tab and
    newline allowed, no other control, bidi or separator character (`check_free_text`)."""
    return check_free_text(value, field_name, max_length, multiline=True)


def check_filter(value: str, field_name: str, max_length: int = 256) -> str:
    """A list filter: empty, or printable text of at most `max_length` characters."""
    if value and (len(value) > max_length or not value.isprintable()):
        raise InvalidArgument(field_name, f"is printable text of at most {max_length} characters")
    return value
