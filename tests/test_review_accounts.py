"""Moderator accounts in a real Postgres: hashes only, sign-in, disabling releases held items."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support import LEASE, insert_items
from worker.errors import (
    ModeratorExists,
    ReviewError,
    UnknownModerator,
)
from worker.review.accounts import (
    add_moderator,
    authenticate,
    disable_moderator,
    require_moderator,
    set_password,
)
from worker.review.items import get_item
from worker.review.queue import claim

pytestmark = pytest.mark.integration


def test_moderator_accounts_store_only_a_hash(engine: sa.Engine) -> None:
    """An account keeps an Argon2id hash; sign-in checks it and refuses wrong or disabled ones."""
    add_moderator(engine, "alice", "correct horse battery")
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT password_hash FROM moderators")).scalar_one()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert authenticate(engine, "alice", "correct horse battery") is not None
    assert authenticate(engine, "alice", "wrong horse battery") is None
    assert authenticate(engine, "nobody", "correct horse battery") is None
    with pytest.raises(ModeratorExists):
        add_moderator(engine, "alice", "another long password")
    with pytest.raises(ReviewError, match="at least 12"):
        add_moderator(engine, "bob", "short")
    with pytest.raises(ReviewError, match="moderator name"):
        add_moderator(engine, "bob smith", "long enough password")
    set_password(engine, "alice", "a brand new password")
    assert authenticate(engine, "alice", "correct horse battery") is None
    assert authenticate(engine, "alice", "a brand new password") is not None


def test_disabling_a_moderator_releases_their_items(engine: sa.Engine) -> None:
    """A disabled account cannot sign in or act, and what it held returns to the queue."""
    (item_id,) = insert_items(engine, 1)
    add_moderator(engine, "alice", "correct horse battery")
    claim(engine, item_id, "alice", lease_s=LEASE)
    assert disable_moderator(engine, "alice") == [item_id]
    assert get_item(engine, item_id).status == "pending"
    assert authenticate(engine, "alice", "correct horse battery") is None
    with pytest.raises(UnknownModerator, match="add-moderator alice"):
        require_moderator(engine, "alice")
    with pytest.raises(UnknownModerator):
        disable_moderator(engine, "nobody")
