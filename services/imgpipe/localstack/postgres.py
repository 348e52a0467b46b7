"""A private PostgreSQL 15 cluster: its own data dir, port and socket dir; never the system service."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psycopg
import sqlalchemy
from psycopg import sql
from sqlalchemy.pool import NullPool

from imgpipe.localstack.endpoints import POSTGRES
from imgpipe.localstack.errors import LocalStackError
from imgpipe.localstack.ports import LOOPBACK
from imgpipe.localstack.processes import ProcessSpec
from imgpipe.localstack.server import LocalServer

APP_ROLE = "imgpipe"
APP_DATABASE = "imgpipe"
SUPERUSER = "postgres"
# initdb and postgres refuse to run as root; Debian's package creates this system user.
SYSTEM_USER = "postgres"


def database_url(password: str, port: int, host: str = LOOPBACK) -> str:
    return f"postgresql+psycopg://{APP_ROLE}:{password}@{host}:{port}/{APP_DATABASE}"


def server_version(url: str, timeout: float = 5.0) -> str:
    """`SHOW server_version` through SQLAlchemy and the URL's driver; raises when unreachable."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": int(timeout)})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
            return str(connection.execute(sqlalchemy.text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


def url_ready(url: str) -> bool:
    try:
        server_version(url, timeout=3.0)
    except sqlalchemy.exc.OperationalError:
        return False
    return True


def initdb_argv(bin_dir: Path, data_dir: Path) -> list[str]:
    return [
        str(bin_dir / "initdb"),
        "-D",
        str(data_dir),
        "--username",
        SUPERUSER,
        # Superuser access only through the private socket dir; TCP needs a password.
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]


def server_argv(bin_dir: Path, data_dir: Path, port: int, socket_dir: Path) -> list[str]:
    return [
        str(bin_dir / "postgres"),
        "-D",
        str(data_dir),
        "-c",
        f"listen_addresses={LOOPBACK}",
        "-c",
        f"port={port}",
        "-c",
        f"unix_socket_directories={socket_dir}",
    ]


def _run_as_system_user() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _check_reachable(path: Path, user: str) -> None:
    """The unprivileged user must be able to enter every parent of the data dir."""
    uid = pwd.getpwnam(user).pw_uid
    for parent in path.parents:
        mode = parent.stat()
        if mode.st_uid != uid and not mode.st_mode & stat.S_IXOTH:
            raise LocalStackError(
                f"the {user} user cannot enter {parent}: set IMGPIPE_CACHE_DIR to a directory it can reach "
                "(e.g. /var/tmp/imgpipe)"
            )


class PostgresServer(LocalServer):
    component = POSTGRES
    port_names = ("postgres",)
    # SIGINT is PostgreSQL's fast shutdown, what `pg_ctl stop -m fast` sends; SIGTERM ("smart") would
    # wait for every client to disconnect.
    stop_signal = signal.SIGINT

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    def prepare(self) -> None:
        user = _run_as_system_user()
        for directory in (self.home, self.socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
            if user is not None:
                shutil.chown(directory, user, user)
        if user is not None:
            _check_reachable(self.home, user)
        if (self.data_dir / "PG_VERSION").is_file():
            return
        shutil.rmtree(self.data_dir, ignore_errors=True)  # left over from an interrupted initdb
        result = subprocess.run(
            initdb_argv(self.installation.postgres_bin, self.data_dir),
            capture_output=True,
            text=True,
            check=False,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
        if result.returncode != 0:
            raise LocalStackError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def process(self) -> ProcessSpec:
        return ProcessSpec(
            argv=tuple(
                server_argv(self.installation.postgres_bin, self.data_dir, self.port(), self.socket_dir)
            ),
            user=_run_as_system_user(),
        )

    def _superuser_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port(),
            user=SUPERUSER,
            dbname="postgres",
            connect_timeout=3,
            autocommit=True,
        )

    def is_ready(self) -> bool:
        try:
            with self._superuser_connection():
                return True
        except psycopg.OperationalError:
            return False

    def bootstrap(self) -> None:
        with self._superuser_connection() as connection:
            role_exists = connection.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]
            ).fetchone()
            verb = sql.SQL("ALTER") if role_exists else sql.SQL("CREATE")
            # Set the password every time: stack.json is its source of truth.
            connection.execute(
                sql.SQL("{} ROLE {} WITH LOGIN PASSWORD {}").format(
                    verb, sql.Identifier(APP_ROLE), sql.Literal(self.config.postgres_password)
                )
            )
            if not connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [APP_DATABASE]
            ).fetchone():
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                    )
                )
        # Ready for the services only when their own URL works end to end.
        server_version(self.endpoint_fields()["database_url"])

    def endpoint_fields(self) -> dict[str, str]:
        return {"database_url": database_url(self.config.postgres_password, self.port())}
