"""`itmguard db upgrade` against a real Postgres, several at once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from tests.support import fresh_database, wait_for
from worker.persistence import MIGRATION_LOCK_KEY, alembic_config, check_schema_current

pytestmark = pytest.mark.integration

UPGRADES = 4


def _waiting_for_the_lock(engine: sa.Engine) -> int:
    """Sessions of this database waiting for the migration lock."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND classid = 0 AND objid = :key AND objsubid = 1"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                ),
                {"key": MIGRATION_LOCK_KEY},
            ).scalar_one()
        )


def test_concurrent_upgrades_migrate_the_database_once() -> None:
    """Four `itmguard db upgrade` released at the same moment on an empty database all exit
    0, one after another under the advisory lock: the schema ends at head, with no
    duplicate-table errors."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with fresh_database() as url:
        engine = sa.create_engine(url)
        env = {**os.environ, "ITMGUARD_DATABASE_URL": url}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with engine.connect() as holder:
                lock = {"key": MIGRATION_LOCK_KEY}
                holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), lock)
                procs += [
                    subprocess.Popen(
                        [sys.executable, "-m", "worker.cli", "db", "upgrade"],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                    for _ in range(UPGRADES)
                ]
                wait_for(
                    lambda: _waiting_for_the_lock(engine) == UPGRADES,
                    timeout=60,
                    what=f"{UPGRADES} upgrades waiting for the migration lock",
                )
                holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), lock)
            outputs = [proc.communicate(timeout=120)[0].decode() for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert [proc.returncode for proc in procs] == [0] * UPGRADES, outputs
        assert not [out for out in outputs if "already exists" in out or "Traceback" in out]
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert [v for (v,) in versions] == [head]
        check_schema_current(engine)
        engine.dispose()
