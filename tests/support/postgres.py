"""Database fixtures: a fresh, empty database per test on SQLite and on PostgreSQL.

PostgreSQL comes from `BT_TEST_POSTGRES_URL` (an asyncpg URL to a server where the user may
CREATE DATABASE) or, failing that, from a throw-away cluster this module starts with `initdb` and
`pg_ctl` (as the `postgres` user when running as root, since PostgreSQL refuses to run as root).
With neither, PostgreSQL tests are skipped, except under `CI=true`, where they fail.

Fixtures:
- `postgres_server` (session): the server, or skip/fail.
- `postgres_database_url`: a fresh PostgreSQL database, dropped after the test.
- `database_url`: parametrized `sqlite` / `postgres` (marked `postgres`): a fresh empty database.
- `migrated_db`: a `Database` on `database_url`, upgraded to head, disposed after.

The fixtures that create databases are synchronous (their SQL runs on a private event loop in a
worker thread), so they work for sync tests and any pytest-asyncio loop scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
import pytest
from sqlalchemy.engine import make_url

from bot.storage.db import Database
from bot.storage.migrate import upgrade

ENV_URL = "BT_TEST_POSTGRES_URL"
_T = TypeVar("_T")


def in_ci() -> bool:
    """True when running under CI (`CI=true`), where a missing PostgreSQL is an error."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"PostgreSQL is required when CI=true: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")


def _run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion on a private loop in another thread, so it never meets the
    test's own event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _asyncpg_dsn(url: str, database: str | None = None) -> str:
    sa_url = make_url(url).set(drivername="postgresql")
    if database is not None:
        sa_url = sa_url.set(database=database)
    return sa_url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class PostgresServer:
    """A reachable PostgreSQL server and an admin URL on it (`postgresql+asyncpg://…`)."""

    admin_url: str

    def url_for(self, database: str) -> str:
        """The asyncpg URL of `database` on this server."""
        return (
            make_url(self.admin_url)
            .set(drivername="postgresql+asyncpg", database=database)
            .render_as_string(hide_password=False)
        )

    async def _execute(self, sql: str) -> None:
        connection = await asyncpg.connect(_asyncpg_dsn(self.admin_url), timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    def create_database(self) -> str:
        """Create a fresh empty database and return its name."""
        name = f"bt_{secrets.token_hex(6)}"
        _run_async(lambda: self._execute(f'CREATE DATABASE "{name}"'))
        return name

    def drop_database(self, name: str) -> None:
        """Drop `name`, disconnecting whatever a test left connected."""
        _run_async(lambda: self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A fresh database's URL for the duration of the block."""
        name = self.create_database()
        try:
            yield self.url_for(name)
        finally:
            self.drop_database(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryCluster:
    """A PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port, trust auth."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port: int | None = None
        self._prefix: list[str] = []

    @staticmethod
    def tool(name: str) -> str | None:
        """Path of a PostgreSQL server program: on PATH, or Debian's versioned folder."""
        found = shutil.which(name)
        if found is not None:
            return found
        candidates = sorted(
            Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
            key=lambda path: (
                int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0
            ),
        )
        return str(candidates[-1]) if candidates else None

    @classmethod
    def why_not(cls) -> str | None:
        """Why a temporary cluster cannot be started here, or None if it can."""
        for tool in ("initdb", "pg_ctl"):
            if cls.tool(tool) is None:
                return f"set {ENV_URL}, or put PostgreSQL's {tool} on PATH"
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                return "running as root, and runuser is missing to drop to the postgres user"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no postgres user to run PostgreSQL as"
        return None

    def _run(self, *args: str, timeout: float = 120) -> None:
        assert self.root is not None
        program = self.tool(args[0]) or args[0]
        result = subprocess.run(
            [*self._prefix, program, *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def start(self) -> str:
        """Create and start the cluster; returns the admin URL."""
        self.root = Path(tempfile.mkdtemp(prefix="bt-pg-"))
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: hand the folder to postgres and run as it.
            shutil.chown(self.root, user="postgres", group=None)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        data = self.root / "data"
        self._run(
            "initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip
        last_error: Exception | None = None
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(data), "-l", str(self.root / "postgres.log"),
                    "-o", options, "-w", "-t", "60", "start",
                )  # fmt: skip
            except RuntimeError as exc:
                last_error = exc
                continue
            return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"
        raise RuntimeError(f"could not start PostgreSQL: {last_error}; see {self.root}")

    def restart(self) -> None:
        """Restart the server (fast shutdown: connections are cut), same port and options; the
        log file keeps the new server's output off our pipes."""
        assert self.root is not None
        self._run(
            "pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "postgres.log"),
            "-m", "fast", "-w", "-t", "60", "restart",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the cluster and remove its folder."""
        if self.root is None:
            return
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


def _check_reachable(admin_url: str) -> None:
    async def probe() -> None:
        connection = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
        await connection.close()

    _run_async(probe)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: `BT_TEST_POSTGRES_URL`, or a temporary cluster."""
    configured = os.environ.get(ENV_URL, "").strip()
    if configured:
        admin_url = (
            make_url(configured)
            .set(drivername="postgresql+asyncpg")
            .render_as_string(hide_password=False)
        )
        try:
            _check_reachable(admin_url)
        except Exception as exc:  # a URL that was asked for and does not work is an error
            pytest.fail(f"{ENV_URL} is set but unusable: {exc}", pytrace=False)
        yield PostgresServer(admin_url)
        return

    reason = TemporaryCluster.why_not()
    if reason is not None:
        _unavailable(reason)
    cluster = TemporaryCluster()
    try:
        try:
            admin_url = cluster.start()
            _check_reachable(admin_url)
        except Exception as exc:
            _unavailable(f"a temporary cluster did not start: {exc}")
        yield PostgresServer(admin_url)
    finally:
        cluster.stop()


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (asyncpg URL), dropped after the test."""
    with postgres_server.fresh_database() as url:
        yield url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database's async URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'billing-triage.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url


@pytest.fixture
async def migrated_db(database_url: str) -> AsyncIterator[Database]:
    """A `Database` on a fresh database upgraded to head; disposed after the test."""
    await upgrade(database_url)
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()
