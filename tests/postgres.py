"""A real PostgreSQL server for tests: its own cluster in a temporary folder, on a free port.

The shared store's PostgreSQL path (psycopg 3) is tested against Debian's PostgreSQL, not a
stand-in. Debian's ``initdb`` refuses to run as root, and root is who runs the tests here and
in CI, so as root the cluster belongs to the ``postgres`` user the package creates: its folder
is made with ``mkdtemp`` directly under /tmp (pytest's own folders are 0700 root, out of that
user's reach) and handed to it, and every server command runs through ``runuser``. As any
other user the commands run as that user. The superuser is ``bundle``, trusted on 127.0.0.1
without a password; the server also listens on a Unix socket in the folder, not in the
system's /var/run/postgresql.

    server = PostgresServer()      # initdb
    server.start()                 # pg_ctl start on a free 127.0.0.1 port
    url = server.create_database("store_tests")
    server.stop(); server.start()  # the same folder, port and data
    server.remove()                # stop, and delete the folder
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

SUPERUSER = "bundle"
SERVER_USER = "postgres"  # the Debian package's user, who runs the server when we are root
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
START_WAIT_S = 60
MISSING = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found under "
    f"{DEBIAN_BINARIES}/*/bin: run `make postgres-packages` (as root), which installs "
    "Debian's postgresql package"
)


class PostgresMissing(RuntimeError):
    """PostgreSQL's server binaries are not installed."""


class PostgresFailed(RuntimeError):
    """A PostgreSQL command failed; the message carries its output and the server's log."""


def postgres_bin() -> Path:
    """The newest Debian PostgreSQL's bin folder (``/usr/lib/postgresql/<N>/bin``)."""
    found = [
        path.parent
        for path in DEBIAN_BINARIES.glob("*/bin/initdb")
        if path.parent.parent.name.isdigit() and (path.parent / "pg_ctl").exists()
    ]
    if not found:
        raise PostgresMissing(MISSING)
    return max(found, key=lambda path: int(path.parent.name))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, started and stopped by the tests."""

    def __init__(self, port: int | None = None) -> None:
        self.bin = postgres_bin()
        self.as_server_user = os.geteuid() == 0
        # Directly under /tmp: the socket path (folder/.s.PGSQL.PORT) must stay under 107
        # bytes and, as root, the postgres user must reach the folder.
        self.folder = Path(tempfile.mkdtemp(prefix="bundle-pg-", dir="/tmp"))
        self.data = self.folder / "data"
        self.log = self.folder / "log"
        self.port = port or free_port()
        self._databases = 0
        self._started = False
        if self.as_server_user:
            shutil.chown(self.folder, SERVER_USER, SERVER_USER)
        try:
            self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER])
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """The maintenance database ``postgres``; tests use their own (``create_database``)."""
        return self.url_for("postgres")

    @property
    def running(self) -> bool:
        status = subprocess.run(
            self._argv(["pg_ctl", "-D", str(self.data), "status"]),
            cwd=self.folder,
            capture_output=True,
        )
        return status.returncode == 0

    def start(self) -> None:
        """Start the server on its port and wait until it accepts connections.

        The first start may find its free port taken meanwhile by another process, and then
        moves to another; later starts keep the port, which clients already hold in URLs.
        """
        for attempt in range(3):
            options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            try:
                self._run(
                    ["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log)]
                    + ["-w", "-t", str(START_WAIT_S), "start"]
                )
            except PostgresFailed as error:
                if self._started or "could not bind" not in str(error) or attempt == 2:
                    raise
                self.port = free_port()
            else:
                self._started = True
                return

    def stop(self) -> None:
        """Stop the server at once (``-m fast``: open sessions are ended, not waited for)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def create_database(self, name: str) -> str:
        """A new, empty database ``name``; its URL."""
        import psycopg  # here: conftest imports this module in every run, most never need it
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def fresh_database(self, hint: str) -> str:
        """A new database named after ``hint`` (e.g. a test module) and unique in this cluster."""
        self._databases += 1
        slug = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")
        return self.create_database(f"{slug[-40:]}_{self._databases}")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.remove()

    def _argv(self, command: Sequence[str]) -> list[str]:
        argv = [str(self.bin / command[0]), *command[1:]]
        return ["runuser", "-u", SERVER_USER, "--", *argv] if self.as_server_user else argv

    def _run(self, command: Sequence[str]) -> None:
        # cwd: the server user cannot enter root's working folder, and initdb says so.
        done = subprocess.run(self._argv(command), cwd=self.folder, capture_output=True, text=True)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise PostgresFailed(
                f"{command[0]} {command[-1]} failed ({done.returncode}) for the cluster in "
                f"{self.data}:\n{done.stdout}{done.stderr}\nserver log {self.log}:\n{log}"
            )
