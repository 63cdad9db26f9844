"""Alembic migrations: the only way the itmguard database schema changes.

Shipped inside the distribution so `itmguard db upgrade` works from an
installed package, not only from a source checkout.
"""
