"""Throwaway PostgreSQL clusters for tests: primaries, streaming replicas and shards, real servers.

Built with the Debian server binaries (`/usr/lib/postgresql/<newest>/bin`, or
`$SHIELDX_PG_BINDIR`): `initdb`, `pg_ctl`, `pg_basebackup`. `PgWorkspace` owns one temporary
directory and every server started in it; closing it (also when a test fails, or at interpreter
exit as a last resort) stops them all and deletes the directory.

What you get, exactly:

- Root: a `mkdtemp` directory under the system temp dir, owned by the `postgres` user. When the
  tests run as root (they do in CI), every server binary runs as `postgres` through
  `runuser -u postgres --`; as any other user the binaries run as that user. Each node's data
  directory is `<root>/<name>`, its log `<root>/<name>.log`, its Unix socket in `<root>`.
- Network: `127.0.0.1` only, on a free port picked at start (retried on another port if it was
  taken meanwhile). Authentication is `trust` for user `postgres`; `node.dsn` is
  `postgresql://postgres@127.0.0.1:<port>/postgres`.
- Settings: small (`shared_buffers=16MB`, `max_connections=60`), `wal_level=replica`, eight WAL
  senders and slots, `hot_standby=on`, `wal_receiver_status_interval=1s`, `wal_log_hints=on`
  (so `pg_rewind` can rejoin a deposed primary). `fsync=off` unless
  `durable=True`: the kernel still holds every write, so data survives a killed process (which is
  what these tests do), only not a machine crash. Port and `cluster_name` (= the node name, also
  the replica's `application_name` towards its primary) are passed on the server command line.
- `primary(name)`: initdb + start; returns when it accepts connections (`pg_ctl -w`).
- `replica(of, name)`: `pg_basebackup -R -X stream -C -S <name>` (a physical replication slot
  named after the replica keeps the primary's WAL until the replica has it), start, and wait
  until the primary lists it as `streaming` in `pg_stat_replication`. The primary's
  `synchronous_standby_names` is stripped from the copied configuration, so a promoted replica
  never waits for a standby it does not have.
- `shard(name, replicas=1, synchronous=True)`: a primary `<name>-p` with replicas
  `<name>-r1`...; with `synchronous`, the primary gets
  `synchronous_standby_names = 'ANY 1 ("<name>-r1", ...)'` and the call returns only once a
  replica reports `sync_state` `sync`/`quorum`: from then on a COMMIT returns only after a
  replica has flushed its WAL (`synchronous_commit=on`, the default). Extra `settings` (e.g.
  `max_prepared_transactions` for two-phase commit) go to the primary and reach the replicas
  through the base backup; prepared transactions replicate and survive a promotion.
- `node.kill()`: SIGKILL to the postmaster (its pid is line 1 of `postmaster.pid`) and nothing
  else, as a crash of the server process. Its backends notice the postmaster's death and exit
  within milliseconds; the listening socket is gone at once, so new connections are refused.
- `node.promote()`: `SELECT pg_promote(true, 30)`, then checks `pg_is_in_recovery()` is false.
- Readings: `is_in_recovery()`, `current_lsn()` (`pg_current_wal_lsn()`, primaries),
  `replay_lsn()` (`pg_last_wal_replay_lsn()`, replicas), `shard.replication_lag_bytes(replica)`
  (the primary's current LSN minus the replica's replayed one, never negative), and
  `shard.wait_caught_up()`. LSNs are integers (WAL byte positions).
- `close()`: `pg_ctl stop -m immediate` for each node still running, then SIGKILL to any process
  left whose working directory is inside the root (PostgreSQL processes run in their data
  directory, so orphans of a killed postmaster are found too), then the directory is removed.
- Abandoned workspaces: each root holds `owner.pid`, the pid of the process that made it. A new
  workspace first reaps any `shieldx-pg-*` root whose owner is dead (a test run killed with
  SIGKILL cannot clean up after itself): its servers are killed and the directory removed.

Typical cost on a loaded two-core box: initdb about 0.6 s, start 0.1 s, a replica 0.3 s.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from clients.endpoints import free_port

SUPERUSER = "postgres"
OWNER_FILE = "owner.pid"
_REQUIRED = ("initdb", "pg_ctl", "pg_basebackup")
_START_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries (or the `postgres` OS user, when running as root) are missing."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and pg_basebackup (the newest Debian version wins)."""
    override = os.environ.get("SHIELDX_PG_BINDIR")
    candidates = (
        [Path(override)]
        if override
        else sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True)
    )
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in _REQUIRED):
            return bindir
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) found")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def parse_lsn(text: str) -> int:
    """`16/B374D848` as the WAL byte position it names."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class PgNode:
    """One PostgreSQL server of a workspace."""

    name: str
    """Node name: data directory name and `cluster_name`."""
    data_dir: Path
    """Its data directory."""
    port: int
    """TCP port on 127.0.0.1."""
    workspace: PgWorkspace = field(repr=False)
    """The workspace that owns it."""
    durable: bool = False
    """fsync on (True) or off."""

    @property
    def dsn(self) -> str:
        """libpq URI of database `postgres` as the superuser."""
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        """libpq URI of another database on this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def log_path(self) -> Path:
        """The server log (`pg_ctl -l`)."""
        return self.workspace.root / f"{self.name}.log"

    def log(self) -> str:
        """The server log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # Lifecycle

    def start(self) -> None:
        """Start the server and wait until it accepts connections (a taken port is swapped once or twice).

        After `kill`, the lock files name a postmaster that is dead but may be unreaped (a zombie
        still answers `kill(pid, 0)`, so PostgreSQL would refuse to start): they are removed first.
        """
        if self.postmaster_pid() is not None and not self.running():
            self.wait_stopped()
            (self.workspace.root / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for attempt in range(_START_ATTEMPTS):
            options = f"-p {self.port} -c cluster_name={self.name}"
            result = self.workspace.run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
                check=False,
            )
            if result.returncode == 0:
                return
            if "could not bind" in self.log() and attempt + 1 < _START_ATTEMPTS:
                self.port = free_port()
                continue
            raise RuntimeError(f"{self.name} did not start:\n{result.stdout}\n{self.log()[-3000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`pg_ctl stop -m fast|smart|immediate`); no-op if it is not running."""
        if self.running():
            self.workspace.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def postmaster_pid(self) -> int | None:
        """The pid in `postmaster.pid`, or None when the file is absent."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None

    def running(self) -> bool:
        """True if the postmaster named in `postmaster.pid` is alive (a killed, unreaped one is not)."""
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def kill(self) -> int:
        """SIGKILL the postmaster (a crash of the server); returns its pid."""
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{self.name} has no postmaster.pid: not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_stopped(self, timeout: float = 10.0) -> None:
        """Wait until no process of this node is left (after `kill`, its backends exit on their own)."""
        deadline = time.monotonic() + timeout
        while self.workspace.processes_in(self.data_dir):
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes of {self.name} still running after {timeout}s")
            time.sleep(0.02)

    # Queries

    @contextlib.contextmanager
    def connect(self, dbname: str = "postgres", timeout: float = 5.0) -> Iterator[psycopg.Connection[Any]]:
        """A short-lived autocommit connection."""
        with psycopg.connect(self.dsn_for(dbname), autocommit=True, connect_timeout=max(2, int(timeout))) as c:
            yield c

    def query(self, sql: str, params: Sequence[Any] = (), dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """All rows of one statement (autocommit)."""
        with self.connect(dbname) as connection:
            cursor = connection.execute(sql.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def value(self, sql: str, params: Sequence[Any] = (), dbname: str = "postgres") -> Any:
        """The first column of the first row."""
        rows = self.query(sql, params, dbname)
        return rows[0][0] if rows else None

    def is_in_recovery(self) -> bool:
        """`pg_is_in_recovery()`: True for a replica (or a primary still replaying at start)."""
        return bool(self.value("SELECT pg_is_in_recovery()"))

    def current_lsn(self) -> int:
        """`pg_current_wal_lsn()` (primaries only)."""
        return parse_lsn(self.value("SELECT pg_current_wal_lsn()::text"))

    def replay_lsn(self) -> int:
        """`pg_last_wal_replay_lsn()` (replicas only)."""
        text = self.value("SELECT pg_last_wal_replay_lsn()::text")
        if text is None:
            raise RuntimeError(f"{self.name} is not replaying WAL")
        return parse_lsn(text)

    def promote(self, timeout: int = 30) -> None:
        """`pg_promote(true, timeout)`, then check the node left recovery."""
        if not self.value("SELECT pg_promote(true, %s)", (timeout,)):
            raise RuntimeError(f"{self.name} was not promoted within {timeout}s")
        if self.is_in_recovery():
            raise RuntimeError(f"{self.name} is still in recovery after pg_promote")

    def replication(self) -> dict[str, tuple[str, str]]:
        """Replicas connected to this primary: application_name -> (state, sync_state)."""
        rows = self.query("SELECT application_name, state, sync_state FROM pg_stat_replication")
        return {name: (state, sync) for name, state, sync in rows}

    def set_synchronous_standbys(self, names: Sequence[str], timeout: float = 30.0) -> None:
        """Require a flush on any one of `names` before a COMMIT returns (empty: asynchronous again)."""
        setting = "ANY 1 (" + ", ".join(f'"{n}"' for n in names) + ")" if names else ""
        with self.connect() as connection:
            connection.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(setting)))
            connection.execute("SELECT pg_reload_conf()")
        if not names:
            return
        _wait(
            lambda: any(sync in ("sync", "quorum") for n, (_, sync) in self.replication().items() if n in names),
            timeout,
            f"no synchronous standby among {list(names)} on {self.name}",
        )


@dataclass
class PgShard:
    """A primary and its streaming replicas."""

    name: str
    """Shard name; nodes are `<name>-p`, `<name>-r1`, ..."""
    primary: PgNode
    """The node created as primary."""
    replicas: list[PgNode]
    """Its replicas, in creation order."""
    synchronous: bool
    """Whether commits wait for a replica's flush."""

    @property
    def nodes(self) -> list[PgNode]:
        """Primary first, then replicas."""
        return [self.primary, *self.replicas]

    def replication_lag_bytes(self, replica: PgNode, primary: PgNode | None = None) -> int:
        """WAL bytes the primary has written and `replica` has not replayed (0 when caught up)."""
        source = primary or self.primary
        return max(0, source.current_lsn() - replica.replay_lsn())

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every replica has replayed the primary's WAL as of this call."""
        target = self.primary.current_lsn()
        for replica in self.replicas:
            _wait(lambda r=replica: r.replay_lsn() >= target, timeout, f"{replica.name} did not catch up")


class PgWorkspace:
    """A temporary directory of PostgreSQL servers; use as a context manager (or call `close`)."""

    def __init__(self, *, bindir: Path | None = None, prefix: str = "shieldx-pg-") -> None:
        self.bindir = bindir or find_bindir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                account = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, but there is no 'postgres' user to run the server"
                ) from None
        reap_abandoned(prefix)
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        (self.root / OWNER_FILE).write_text(str(os.getpid()))
        if self._as_postgres:
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.nodes: list[PgNode] = []
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> PgWorkspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server binary (as `postgres` when we are root) with a clean libpq environment."""
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        result = subprocess.run(
            command, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}):\n{result.stdout}")
        return result

    def primary(self, name: str, *, durable: bool = False, settings: Mapping[str, str] | None = None) -> PgNode:
        """A new cluster (initdb), started."""
        node = PgNode(name, self.root / name, free_port(), self, durable)
        self.run(
            "initdb", "-D", str(node.data_dir), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "shared_buffers": "16MB",
            "max_connections": "60",
            "wal_level": "replica",
            "max_wal_senders": "8",
            "max_replication_slots": "8",
            "hot_standby": "on",
            "wal_receiver_status_interval": "1s",
            "wal_log_hints": "on",  # lets pg_rewind bring a deposed primary back as a replica
            "fsync": "on" if durable else "off",
            **(settings or {}),
        }
        with (node.data_dir / "postgresql.conf").open("a") as config:
            config.write("\n# tests.support.pgcluster\n")
            config.writelines(f"{key} = {value}\n" for key, value in conf.items())
        self.nodes.append(node)
        node.start()
        return node

    def replica(self, of: PgNode, name: str, *, timeout: float = 30.0) -> PgNode:
        """A streaming replica of `of` (base backup with `-R` and a slot named after it), started."""
        node = PgNode(name, self.root / name, free_port(), self, of.durable)
        self.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(of.port), "-U", SUPERUSER, "-D", str(node.data_dir),
            "-R", "-X", "stream", "-C", "-S", _slot_name(name), "-c", "fast", "--no-sync",
        )  # fmt: skip
        auto_conf = node.data_dir / "postgresql.auto.conf"
        kept = [line for line in auto_conf.read_text().splitlines() if "synchronous_standby_names" not in line]
        auto_conf.write_text("\n".join(kept) + "\n")
        self.nodes.append(node)
        node.start()
        _wait(lambda: of.replication().get(name, ("", ""))[0] == "streaming", timeout, f"{name} is not streaming")
        return node

    def shard(
        self,
        name: str,
        *,
        replicas: int = 1,
        synchronous: bool = False,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> PgShard:
        """A primary `<name>-p` with `replicas` streaming replicas, synchronous if asked.

        `settings` go into the primary's postgresql.conf, which the base backups copy: e.g.
        `{"max_prepared_transactions": "16"}` for two-phase commit (a hot standby needs at least
        the primary's value, which the copy guarantees).
        """
        primary = self.primary(f"{name}-p", durable=durable, settings=settings)
        followers = [self.replica(primary, f"{name}-r{i + 1}") for i in range(replicas)]
        if synchronous:
            if not followers:
                raise ValueError("synchronous replication needs at least one replica")
            primary.set_synchronous_standbys([r.name for r in followers])
        return PgShard(name, primary, followers, synchronous)

    def processes_in(self, directory: Path) -> list[int]:
        """Pids of processes whose working directory is `directory` or below."""
        return processes_in(directory)

    def close(self) -> None:
        """Stop every server (immediately), kill leftovers, delete the directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop("immediate")
        _remove(self.root)


@contextlib.contextmanager
def workspace_or_skip() -> Iterator[PgWorkspace]:
    """A `PgWorkspace` for the block, or the test skipped if the PostgreSQL server binaries are missing."""
    try:
        workspace = PgWorkspace()
    except PostgresUnavailable as missing:
        pytest.skip(str(missing))
    with workspace:
        yield workspace


def processes_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory is `directory` or below."""
    found = []
    prefix = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            found.append(int(entry.name))
    return found


def reap_abandoned(prefix: str = "shieldx-pg-") -> list[Path]:
    """Kill the servers of, and delete, workspaces whose owner process is gone; returns those removed."""
    removed = []
    for root in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if _alive(owner):
            continue
        _remove(root)
        removed.append(root)
    return removed


def _alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not reaped by its parent yet) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _remove(root: Path) -> None:
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def _slot_name(node_name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", node_name.lower())[:63]


def _wait(condition: Any, timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except psycopg.OperationalError:
            pass  # not accepting connections yet
        if time.monotonic() > deadline:
            raise TimeoutError(failure)
        time.sleep(0.05)
