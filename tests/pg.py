"""A throw-away PostgreSQL cluster for the tests: initdb + pg_ctl on a free loopback port.

One cluster per test session, in a temporary directory, stopped and removed afterwards. It needs
the server binaries (Debian's `postgresql` package, which `make test` installs when missing);
without them the tests that need it are skipped, saying so. PostgreSQL refuses to run as root, so
as root the cluster runs as the `postgres` user (`runuser`). Host connections need a password
(scram-sha-256), so a wrong one is refused as on a real server.
"""
from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "switchboard"
PASSWORD = "test-only-pass-4711"
_SEARCH = ("/usr/lib/postgresql/*/bin",)


def server_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first; None if not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links them from /usr/lib/postgresql/N/bin
    candidates = sorted(
        (Path(p) for pattern in _SEARCH for p in glob.glob(pattern) if (Path(p) / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    return candidates[0] if candidates else None


def _directory_others_can_enter() -> str:
    """A temporary directory the `postgres` user can reach (/tmp may be root's alone)."""
    for candidate in (tempfile.gettempdir(), "/var/tmp", "/dev/shm"):
        if os.path.isdir(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    raise PermissionError("no temporary directory the postgres user can enter (/tmp, /var/tmp, /dev/shm)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path
    port: int
    run_as: str | None
    # The tables the migrations make in the shared database (the rest were made by tests).
    migrated_tables: frozenset[str] | None = None
    _names = itertools.count(1)

    @classmethod
    def start(cls) -> PostgresCluster:
        bin_dir = server_binaries()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL's server (initdb, pg_ctl) is not installed: apt-get install postgresql")
        run_as = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="switchboard-pg-", dir=_directory_others_can_enter() if run_as else None))
        cluster = cls(bin_dir, root, _free_port(), run_as)
        try:
            cluster._init()
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def url(self, database: str = "switchboard", *, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its name."""
        name = name or f"fresh_{next(self._names)}"
        self._psql(f'CREATE DATABASE "{name}"')
        return name

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _init(self) -> None:
        if self.run_as:
            shutil.chown(self.root, self.run_as)
        pwfile = self.root / "password"
        pwfile.write_text(PASSWORD + "\n")
        if self.run_as:
            shutil.chown(pwfile, self.run_as)
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.root / "data"), "-U", USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "-t", "60", "start",
        )
        self.create_database("switchboard")

    def _psql(self, sql: str) -> None:
        self._run(
            str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
            "-p", str(self.port), "-U", USER, "-d", "postgres", "-c", sql,
        )

    def _run(self, *command: str) -> None:
        if self.run_as:
            command = ("runuser", "-u", self.run_as, "--", *command)
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}")
