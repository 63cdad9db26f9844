"""The review queue's rows of the settings table: the moderator the CLI acts as, leases and
order, the decision workflow (reasons, undo, second opinions) and the review web page.

Kept apart from `worker.settings_table`, which joins them to the worker's rows, so each table
stays short enough to read.
"""

from __future__ import annotations

import re

from worker.parsers import (
    boolean,
    choice,
    csv,
    float_in,
    int_in,
    matching,
    networks,
    nonempty,
    secret,
    secret_file,
)
from worker.settings_spec import SettingSpec

__all__ = ["MODERATOR_NAME", "REASON_CODE", "REVIEW_ORDERS", "REVIEW_SETTINGS"]

REVIEW_ORDERS = ("score", "age")
MODERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MODERATOR_RULE = "1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"

REASON_CODE = re.compile(r"[a-z0-9_]{1,64}")


def _reason_codes(text: str) -> tuple[str, ...]:
    codes = csv(text)
    if not codes:
        raise ValueError("give at least one reason code")
    bad = [code for code in codes if not REASON_CODE.fullmatch(code)]
    if bad:
        raise ValueError(f"reason codes are 1-64 lower-case letters, digits or '_': {bad[0]!r}")
    if len(set(codes)) != len(codes):
        raise ValueError("a reason code is listed twice")
    return codes


REVIEW_SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "ITMGUARD_MODERATOR",
        "moderator",
        matching(MODERATOR_NAME, MODERATOR_RULE),
        "moderator account the `itmguard review` commands act as",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_LEASE_S",
        "review_lease_s",
        float_in(1.0, 86_400.0),
        "how long a claimed review item stays with its moderator, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_ORDER",
        "review_order",
        choice(REVIEW_ORDERS),
        "which pending item is claimed next: score (lowest first) or age (oldest first)",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_REASONS",
        "review_reasons",
        _reason_codes,
        "policy categories a moderator picks from with a confirmed mismatch, comma-separated "
        "codes of lower-case letters, digits and '_'",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_REQUIRE_REASON",
        "review_require_reason",
        boolean,
        "a confirmed mismatch needs one of ITMGUARD_REVIEW_REASONS",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_UNDO_S",
        "review_undo_s",
        float_in(0.0, 3600.0),
        "how long a moderator may undo her own decision, in seconds; 0 turns undo off",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_SECOND_OPINION_SHARE",
        "review_second_opinion_share",
        float_in(0.0, 1.0),
        "share of first decisions (0-1) sent back to the queue for another moderator's opinion; "
        "0 sends none",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_HOST", "review_host", nonempty, "address the review web page listens on"
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_PORT",
        "review_port",
        int_in(1, 65_535),
        "port the review web page listens on",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_SECRET",
        "review_secret",
        secret,
        "key that signs review-page session cookies, at least 32 characters; "
        "environment only (a flag shows in `ps`)",
        secret=True,
        env_only=True,
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_SECRET_FILE",
        "review_secret",
        secret_file,
        "file holding the key that signs review-page session cookies (a mounted secret)",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_IDLE_S",
        "review_idle_s",
        float_in(60.0, 43_200.0),
        "a review-page session unused this long ends, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_REVIEW_TRUSTED_PROXIES",
        "review_trusted_proxies",
        networks,
        "addresses or networks of the proxies in front of the review page whose "
        "X-Forwarded-For is believed, comma separated",
    ),
)
