"""List paging per AIP-158: `page_size`, an opaque `page_token`, an empty `next_page_token` at the end.

A token is a base64url cursor bound to the filter it was issued for, so replaying it with
other filters is INVALID_ARGUMENT instead of a silently wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servers.mesh.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageRequest:
    """A validated page request: how many items, and where the previous page stopped."""

    size: int
    """Items to return, at most; already clamped to the maximum."""
    cursor: Mapping[str, Any] | None
    """The cursor of the previous page, or None for the first page."""
    filter_digest: str
    """Digest of the filter the cursor belongs to."""

    def next_token(self, cursor: Mapping[str, Any] | None) -> str:
        """The `next_page_token` for a page ending at `cursor` (None: this was the last page)."""
        if cursor is None:
            return ""
        body = json.dumps({"f": self.filter_digest, "c": cursor}, separators=(",", ":"), sort_keys=True)
        return base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()


def filter_digest(filters: Mapping[str, Any]) -> str:
    """A short stable digest of a request's filters."""
    canonical = json.dumps(filters, separators=(",", ":"), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def page_request(
    page_size: int,
    page_token: str,
    filters: Mapping[str, Any] | None = None,
    *,
    default_size: int = DEFAULT_PAGE_SIZE,
    max_size: int = MAX_PAGE_SIZE,
) -> PageRequest:
    """Validate `page_size` and `page_token` against the request's `filters`."""
    if page_size < 0:
        raise InvalidArgument("page_size", "must not be negative")
    size = min(page_size or default_size, max_size)
    digest = filter_digest(filters or {})
    if not page_token:
        return PageRequest(size, None, digest)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        cursor = decoded["c"]
        issued_for = decoded["f"]
    except (ValueError, KeyError, TypeError, UnicodeError) as exc:
        raise InvalidArgument("page_token", "is not a token this service issued") from exc
    if issued_for != digest or not isinstance(cursor, dict):
        raise InvalidArgument("page_token", "was issued for a different request")
    return PageRequest(size, cursor, digest)
