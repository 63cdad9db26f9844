"""Sign-in throttling: backoff per account and per client address, and an account lockout.

The state lives in Postgres (`review_signin_throttle`), not in the server's
memory, so a restart does not wipe an attacker's record and every replica
behind a load balancer sees the same counts. Each attempt is counted before
the password is checked, in one transaction that locks the account's and the
address's rows, so a burst of parallel guesses cannot all slip in before the
first failure is written; a right password takes its count back.

- After `account_free` failures of one account within `window_s`, each further
  failure doubles the wait before the next attempt (from `base_delay_s`, at
  most `max_delay_s`); the same for one address after `address_free`.
- After `lockout_after` failures the account is locked: even the right
  password is refused until an admin runs `itmguard review unlock-moderator`.
  Unknown names are counted and locked like real ones, so a lockout tells
  nobody which names exist. Addresses are never locked, only slowed: many
  moderators may share one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from worker.config import MODERATOR_NAME
from worker.persistence import translated

__all__ = [
    "DEFAULT_THROTTLE",
    "Refusal",
    "ThrottlePolicy",
    "begin_attempt",
    "record_failure",
    "record_success",
    "unlock",
]


@dataclass(frozen=True)
class ThrottlePolicy:
    """How failed sign-ins slow down further tries."""

    account_free: int = 5
    address_free: int = 20
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    lockout_after: int = 10
    window_s: float = 900.0
    locked_retry_s: int = 900

    def delay_s(self, failures: int, free: int) -> float:
        """The wait after the `failures`-th failure in a row: none while within `free`."""
        if failures < free:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(failures - free, 62))


DEFAULT_THROTTLE = ThrottlePolicy()


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is refused before any password is checked, and for how long."""

    retry_after_s: int
    locked: bool = False


def _keys(username: str, address: str | None) -> list[tuple[str, str]]:
    keys = [("account", username)] if MODERATOR_NAME.fullmatch(username) else []
    return keys + ([("address", address)] if address else [])


def begin_attempt(
    engine: sa.Engine, policy: ThrottlePolicy, username: str, address: str | None
) -> Refusal | None:
    """Refuse the attempt, or count it as a failure until `record_success` says otherwise."""
    with translated(), engine.begin() as conn:
        conn.execute(  # forget stale rows, skipping any another attempt holds
            sa.text(
                "DELETE FROM review_signin_throttle WHERE (kind, key) IN ("
                "SELECT kind, key FROM review_signin_throttle WHERE locked_at IS NULL "
                "AND last_failure_at < now() - make_interval(secs => :w) "
                "AND (blocked_until IS NULL OR blocked_until < now()) FOR UPDATE SKIP LOCKED)"
            ),
            {"w": policy.window_s},
        )
        rows = [_lock_row(conn, kind, key) for kind, key in _keys(username, address)]
        if any(r.locked_at is not None for r in rows):
            return Refusal(policy.locked_retry_s, locked=True)
        blocked = [
            r.blocked_until - r.now
            for r in rows
            if r.blocked_until is not None and r.blocked_until > r.now
        ]
        if blocked:
            return Refusal(max(1, math.ceil(max(blocked).total_seconds())))
        for row in rows:
            recent = row.now - row.last_failure_at < timedelta(seconds=policy.window_s)
            failures = (row.failures if recent else 0) + 1
            free = policy.account_free if row.kind == "account" else policy.address_free
            delay = policy.delay_s(failures, free)
            conn.execute(
                sa.text(
                    "UPDATE review_signin_throttle SET failures = :f, last_failure_at = :now, "
                    "blocked_until = :until WHERE kind = :kind AND key = :key"
                ),
                {
                    "f": failures,
                    "now": row.now,
                    "until": row.now + timedelta(seconds=delay) if delay else None,
                    "kind": row.kind,
                    "key": row.key,
                },
            )
    return None


def _lock_row(conn: sa.Connection, kind: str, key: str) -> sa.Row[tuple[datetime, ...]]:
    """The throttle row of (`kind`, `key`), made if missing, locked for this transaction."""
    return conn.execute(
        sa.text(
            "INSERT INTO review_signin_throttle (kind, key, failures, last_failure_at) "
            "VALUES (:kind, :key, 0, now()) ON CONFLICT (kind, key) DO UPDATE SET "
            "failures = review_signin_throttle.failures "
            "RETURNING kind, key, failures, last_failure_at, blocked_until, locked_at, now() AS now"
        ),
        {"kind": kind, "key": key},
    ).one()


def record_failure(engine: sa.Engine, policy: ThrottlePolicy, username: str) -> bool:
    """The password was wrong: lock the account once it has failed too often. True if locked."""
    with translated(), engine.begin() as conn:
        locked = conn.execute(
            sa.text(
                "UPDATE review_signin_throttle SET locked_at = now() WHERE kind = 'account' "
                "AND key = :key AND failures >= :n AND locked_at IS NULL RETURNING key"
            ),
            {"key": username, "n": policy.lockout_after},
        ).one_or_none()
    return locked is not None


def record_success(engine: sa.Engine, username: str, address: str | None) -> None:
    """The password was right: the account starts afresh, the address gets its count back."""
    with translated(), engine.begin() as conn:
        conn.execute(
            sa.text(
                "DELETE FROM review_signin_throttle WHERE kind = 'account' AND key = :key "
                "AND locked_at IS NULL"
            ),
            {"key": username},
        )
        conn.execute(
            sa.text(
                "UPDATE review_signin_throttle SET failures = greatest(failures - 1, 0) "
                "WHERE kind = 'address' AND key = :address"
            ),
            {"address": address},
        )


def unlock(engine: sa.Engine, username: str) -> bool:
    """Lift `username`'s lockout and backoff (admin). False if there was nothing to lift."""
    with translated(), engine.begin() as conn:
        result = conn.execute(
            sa.text("DELETE FROM review_signin_throttle WHERE kind = 'account' AND key = :key"),
            {"key": username},
        )
    return bool(result.rowcount)
