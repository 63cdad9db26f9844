"""Alembic environment: runs migrations against the configured database.

The URL comes from the Alembic config (set by `itmguard db upgrade`) or, when
Alembic is run directly from a checkout, from ITMGUARD_DATABASE_URL.

Online, the migration runs under a session-level Postgres advisory lock
(`worker.persistence.MIGRATION_LOCK_KEY`), taken on the migration's own
connection before Alembic reads the current revision: upgrades started at
once (a Job per release, several `itmguard db upgrade` by hand) run one after
another, and each one after the first finds the schema already at its target.
The lock ends with the connection, so a failed or killed upgrade never leaves
it held.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from worker.persistence import MIGRATION_LOCK_KEY

url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("ITMGUARD_DATABASE_URL")
if not url:
    raise SystemExit("set ITMGUARD_DATABASE_URL (postgresql+psycopg://user@host/db)")

if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # the lock outlives this commit (it belongs to the session); the commit ends the
        # transaction the SELECT began, so Alembic begins and commits its own
        connection.commit()
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
