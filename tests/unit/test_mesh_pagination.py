"""AIP-158 paging: sizes, opaque tokens, tokens bound to their filter."""

from __future__ import annotations

import pytest

from servers.mesh.errors import InvalidArgument
from servers.mesh.pagination import MAX_PAGE_SIZE, page_request


def test_default_and_clamped_sizes() -> None:
    assert page_request(0, "").size == 50
    assert page_request(10**6, "").size == MAX_PAGE_SIZE


def test_negative_page_size_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_request(-1, "")
    assert caught.value.violations[0].field == "page_size"


def test_token_round_trips_its_cursor() -> None:
    first = page_request(10, "", {"account": "a"})
    token = first.next_token({"after": 42})
    assert token and "=" not in token
    again = page_request(10, token, {"account": "a"})
    assert again.cursor == {"after": 42}
    assert first.next_token(None) == ""


@pytest.mark.parametrize("token", ["garbage!", "e30", "bm90IGpzb24"])
def test_foreign_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_request(10, token)
    assert caught.value.violations[0].field == "page_token"


def test_token_for_other_filters_is_refused() -> None:
    token = page_request(10, "", {"account": "a"}).next_token({"after": 1})
    with pytest.raises(InvalidArgument):
        page_request(10, token, {"account": "b"})
