"""Engine, sessions and migrations for the task store."""

from __future__ import annotations

import ast
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


def migration_heads() -> set[str]:
    """The head revisions of the migrations, read from each file's `revision` and `down_revision`
    without importing alembic: `pipeline up` asks this to skip an upgrade that would do nothing."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            literal = ast.literal_eval(value) if target.id in ("revision", "down_revision") else None
            if target.id == "revision" and isinstance(literal, str):
                revisions.add(literal)
            elif target.id == "down_revision" and literal is not None:
                parents.update([literal] if isinstance(literal, str) else literal)
    return revisions - parents
