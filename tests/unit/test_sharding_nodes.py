"""Node operations that need no database server: error text hygiene and the embedded sqlite node."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from servers.sharding.domain import Node, NodeRole
from servers.sharding.nodes import DatabaseNodes, NodeError, one_line


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db1 port=5432 password='hunter2 secret'",
        "postgresql://credits:hunter2 secret@db1:5432/credits",
        "host=db1 password=hunter2 secret junk",  # does not parse: found by pattern
    ],
)
def test_error_text_never_holds_the_password(dsn: str) -> None:
    error = RuntimeError('syntax error near "password=hunter2 secret"\n\tHINT: check it')
    text = one_line(error, dsn)
    assert "hunter2" not in text and "***" in text
    assert "\n" not in text


def test_error_text_is_one_short_line() -> None:
    assert "\n" not in one_line(RuntimeError("first\n\tsecond"))
    assert len(one_line(RuntimeError("x" * 2000))) == 500


async def test_a_sqlite_node_is_a_primary_when_its_file_opens(tmp_path: Path) -> None:
    path = tmp_path / "credits.db"
    sqlite3.connect(path).close()
    node = Node("solo", f"sqlite:///{path}", "", NodeRole.PRIMARY)
    look = await DatabaseNodes().observe(node, timeout=1.0)
    assert not look.in_recovery and look.lsn is None
    with pytest.raises(NodeError, match="cannot be promoted"):
        await DatabaseNodes().promote(node, timeout=1.0)


async def test_a_missing_sqlite_file_fails_the_check(tmp_path: Path) -> None:
    node = Node("solo", f"sqlite:///{tmp_path}/missing.db", "", NodeRole.PRIMARY)
    with pytest.raises(NodeError, match="sqlite"):
        await DatabaseNodes().observe(node, timeout=1.0)


async def test_an_unreachable_postgres_node_fails_fast_without_credentials() -> None:
    node = Node("gone", "postgresql://credits:s3cret@127.0.0.1:1/credits", "", NodeRole.PRIMARY)
    with pytest.raises(NodeError) as caught:
        await DatabaseNodes().observe(node, timeout=2.0)
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
