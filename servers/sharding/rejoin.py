"""Rejoin a deposed primary as a streaming replica of its successor, run on the host that holds its data.

The sharding server cannot rebuild a node it only reaches over libpq: `pg_rewind` works on the
stopped server's data directory. So this is the node-side half, run by the operator (or the
node's agent) once the sharding server has fenced the node and reported what it had that the
shard lost (`GetDrStatus.recent_divergences`):

    python -m servers.sharding.rejoin --data-dir /var/lib/postgresql/15/main \\
        --source 'postgresql://postgres@new-primary:5432/postgres' --application-name shard-3-a

Steps, on a stopped server: a CHECKPOINT on the new primary (so its control file names its new
timeline), `pg_rewind` against the new primary (it rewinds only if the
timelines diverged, and says so); `standby.signal`; in `postgresql.auto.conf`, a
`primary_conninfo` naming the new primary (host, port, user; `application_name` = the node id,
which replication modes name) and a `primary_slot_name`, the slot created on the new primary
first so it keeps the WAL the replica still needs; the fence (`default_transaction_read_only`)
and any `synchronous_standby_names` removed, so a later promotion of this node is writable and
waits for nobody it does not know. Start the server afterwards; the monitor sees a replica in
recovery and routes reads to it once it is healthy.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

Tool = Callable[..., "subprocess.CompletedProcess[str]"]
"""Runs a PostgreSQL binary by name with arguments (e.g. as the `postgres` user)."""

_DROPPED_SETTINGS = (
    "primary_conninfo",
    "primary_slot_name",
    "default_transaction_read_only",
    "synchronous_standby_names",
)


@dataclass(frozen=True)
class Rejoined:
    """What a rejoin did."""

    rewound: bool
    """pg_rewind found the timelines diverged and rewound the data directory."""
    primary_conninfo: str
    """What the replica now streams from."""
    slot: str
    """Its replication slot on the new primary."""
    output: str
    """pg_rewind's report."""


def slot_name(application_name: str) -> str:
    """A replication slot name for a node id (lowercase letters, digits and `_`)."""
    return re.sub(r"[^a-z0-9_]", "_", application_name.lower())[:63]


def rejoin(data_dir: Path, source_dsn: str, application_name: str, tool: Tool) -> Rejoined:
    """Rewind a stopped deposed primary and configure it to stream from `source_dsn` (see the module docstring)."""
    with psycopg.connect(source_dsn, autocommit=True, connect_timeout=10) as connection:
        # pg_rewind (15) reads the source's timeline from its last checkpoint, which a fresh promotion may not
        # have written yet: it would report "same timeline, no rewind required", and the node would keep the
        # transactions the shard lost.
        connection.execute("CHECKPOINT")
    rewind = tool(
        "pg_rewind", "--target-pgdata", str(data_dir), "--source-server", source_dsn, "--progress", check=False
    )
    if rewind.returncode != 0:
        raise RuntimeError(f"pg_rewind failed ({rewind.returncode}): {rewind.stdout}")
    slot = slot_name(application_name)
    with psycopg.connect(source_dsn, autocommit=True, connect_timeout=10) as connection:
        connection.execute(
            "SELECT pg_create_physical_replication_slot(%s, true)"
            " WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
            (slot, slot),
        )
    source = conninfo_to_dict(source_dsn)
    kept = {k: v for k, v in source.items() if k in ("host", "hostaddr", "port", "user", "passfile", "sslmode") and v}
    conninfo = make_conninfo("", **kept, application_name=application_name)
    auto_conf = data_dir / "postgresql.auto.conf"
    lines = [
        line
        for line in auto_conf.read_text().splitlines()
        if not any(line.strip().startswith(name) for name in _DROPPED_SETTINGS)
    ]
    lines += [f"primary_conninfo = '{_quoted(conninfo)}'", f"primary_slot_name = '{slot}'"]
    auto_conf.write_text("\n".join(lines) + "\n")
    (data_dir / "standby.signal").touch()
    return Rejoined("no rewind required" not in rewind.stdout, conninfo, slot, rewind.stdout)


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def main() -> None:
    """Command line: rejoin the stopped server whose data directory is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the stopped deposed primary's data directory")
    parser.add_argument(
        "--source", required=True, help="libpq DSN of the new primary (a superuser or replication role)"
    )
    parser.add_argument("--application-name", required=True, help="the node id (replication modes name it)")
    parser.add_argument("--bindir", type=Path, default=None, help="directory of pg_rewind (default: on PATH)")
    args = parser.parse_args()

    def tool(name: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        binary = str(args.bindir / name) if args.bindir else name
        return subprocess.run(
            [binary, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=check
        )

    done = rejoin(args.data_dir, args.source, args.application_name, tool)
    print(
        f"{'rewound' if done.rewound else 'no rewind needed'}; streams from {done.primary_conninfo} (slot {done.slot})"
    )


if __name__ == "__main__":
    main()
