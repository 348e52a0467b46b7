"""`pipeline up` skips `db upgrade` when the store is at the head it reads from the migration files."""

from __future__ import annotations

from alembic.script import ScriptDirectory

from imgpipe.store.db import alembic_config, migration_heads


def test_the_heads_read_from_the_files_are_alembics() -> None:
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://unused/none"))
    assert migration_heads() == set(script.get_heads())
    assert len(migration_heads()) == 1
