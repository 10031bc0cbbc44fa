"""A private PostgreSQL server for tests: Debian's initdb / pg_ctl in a temporary directory, unix socket only.

The server listens on no TCP port (``listen_addresses=''``); clients reach it through the socket in its own directory,
as the superuser ``fleetpatch`` (trust authentication, nothing else can reach the socket's directory from outside this
machine). initdb refuses to run as root, so under root the server runs as ``nobody`` (``runuser``), in a directory
that user owns. ``PostgresServer.start()`` returns once the server accepts connections; ``stop()`` shuts it down and
removes the directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import typing as t

__all__ = ["PostgresServer", "find_bindir", "postgres_skip_reason"]

SUPERUSER = "fleetpatch"


def find_bindir() -> str | None:
    """The newest /usr/lib/postgresql/<major>/bin that holds initdb and pg_ctl, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0)
    for bindir in reversed(candidates):
        if os.access(os.path.join(bindir, "initdb"), os.X_OK) and os.access(os.path.join(bindir, "pg_ctl"), os.X_OK):
            return bindir
    return None


def postgres_skip_reason() -> str | None:
    """Why the tests cannot start a server here, or None (tests/harness/bootstrap.sh installs the package)."""
    if find_bindir() is None:
        return "needs Debian's postgresql package (initdb, pg_ctl under /usr/lib/postgresql/*/bin)"
    try:
        import psycopg  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return "needs psycopg (requirements-dev.txt)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runs the server as nobody under root and needs runuser"
    return None


class PostgresServer:
    """One throwaway server; ``dsn(dbname)`` connects to one of its databases, ``create_database`` makes new ones."""

    def __init__(self, *, bindir: str | None = None) -> None:
        self.bindir = bindir or find_bindir() or ""
        self.base = ""
        self.port = 5432
        self.started = False

    @property
    def datadir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def socket_dir(self) -> str:
        return self.base

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base)
        if done.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return done

    def start(self) -> PostgresServer:
        # /tmp itself (not a pytest tmp_path, whose parents are root's 0700 directories): nobody must reach the socket dir
        self.base = tempfile.mkdtemp(prefix="fp-pg-", dir="/tmp")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.base, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.base, 0o755)
        try:
            self._run([os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                       "--locale=C", "--no-sync"])
            options = f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} -p {self.port} -c fsync=off -c max_connections=50"
            self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", os.path.join(self.base, "server.log"), "-o", options,
                       "-w", "-t", "60", "start"])
            self.started = True
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import psycopg  # pylint: disable=import-outside-toplevel

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        import psycopg  # pylint: disable=import-outside-toplevel
        from psycopg import sql  # pylint: disable=import-outside-toplevel

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "server.log"), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.started:
            try:
                self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", "fast", "-w", "-t", "60", "stop"])
            finally:
                self.started = False
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = ""

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()
