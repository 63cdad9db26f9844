"""Alembic environment: runs migrations against the configured database.

The URL comes from the Alembic config (set by `itmguard db upgrade`) or, when
Alembic is run directly from a checkout, from ITMGUARD_DATABASE_URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

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
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
