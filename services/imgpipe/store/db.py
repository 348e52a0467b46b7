"""Engine, sessions and migrations for the task store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def make_engine(database_url: str, pool_size: int = 5) -> Engine:
    # pre_ping: a connection dropped by a Postgres restart is replaced instead of failing a request.
    return create_engine(database_url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    # alembic is imported here, not at the top: only `db upgrade` needs it, and every service that
    # opens the store would pay its ~0.8 s import at start-up.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser's interpolation character; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (idempotent; what the Helm migration Job runs)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
