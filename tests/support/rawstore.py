"""What a service's store holds on disk, byte for byte: to prove a secret is not among it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql


def stored_bytes(config: Any, service: str) -> bytes:
    """Everything `service`'s store holds: its SQLite files (database, WAL, shared memory), or every
    row of every table in its PostgreSQL schema, each value in its raw form."""
    if not config.database_url:
        files = sorted(Path(config.data_dir).glob(f"{service}.db*"))
        assert files, f"the {service} store has files"
        return b"".join(path.read_bytes() for path in files)
    chunks: list[bytes] = []
    with psycopg.connect(config.database_url) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (config.database_schema,)
        ).fetchall()
        assert tables, f"the schema holds the {service} store's tables"
        for (table,) in tables:
            query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(config.database_schema), sql.Identifier(table))
            for row in connection.execute(query):
                chunks += [value if isinstance(value, bytes) else str(value).encode() for value in row]
    return b"\n".join(chunks)
