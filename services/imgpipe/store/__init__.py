"""The task store: Postgres through SQLAlchemy 2 and psycopg 3, schema managed by Alembic."""
