"""Parsers of setting values: text in, a value out, or a ValueError that says what is accepted.

`worker.config` names which parser each setting uses; the message of the
ValueError becomes the end of the one-line refusal a bad value gets at start.
That refusal shows the value through `mask_url`, so a URL's password never
reaches a terminal or a log, however malformed the rest of the URL is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "boolean",
    "bootstrap_servers",
    "choice",
    "choices",
    "csv",
    "database_url",
    "float_in",
    "int_in",
    "mask_url",
    "matching",
    "networks",
    "nonempty",
    "optional",
    "secret",
    "secret_file",
    "topic_name",
]

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/?#@\s]*):\S*@")
"""A URL's `user:password@`, up to its last `@`: a malformed password may hold `@` or `/`,
and masking a little too much is safe where too little is not."""


def mask_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`; other text unchanged.

    Works on text no URL parser accepts (a bad port, a bad scheme), since such
    a URL is exactly what an error message shows.
    """
    return _USERINFO.sub(r"\g<scheme>\g<user>:***@", text)


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("must be a number") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text == "" else parse(text)


def csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def bootstrap_servers(text: str) -> tuple[str, ...]:
    servers = tuple(s.removeprefix("kafka://") for s in csv(text))
    if not servers:
        raise ValueError("needs at least one host:port")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server!r} is not host:port")
    return servers


def database_url(text: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ValueError("is not a SQLAlchemy URL (postgresql+psycopg://user@host/db)") from None
    if url.drivername != "postgresql+psycopg":
        raise ValueError("must start with postgresql+psycopg:// (Postgres through psycopg 3)")
    return text


def choices(options: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list, in order, of at least one of `options`."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.lower() for p in csv(text))
        unknown = [p for p in names if p not in options]
        if unknown or not names:
            raise ValueError(f"choose from {', '.join(options)} (comma separated, in order)")
        return names

    return parse


def topic_name(text: str) -> str:
    if not text or len(text) > 249 or not all(c.isalnum() or c in "._-" for c in text):
        raise ValueError("a Kafka topic name is 1-249 characters of letters, digits, '.', '_', '-'")
    return text


def nonempty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def matching(pattern: re.Pattern[str], rule: str) -> Callable[[str], str]:
    """Text that `pattern` matches whole; `rule` says in words what it accepts."""

    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise ValueError(rule)
        return text

    return parse


def secret(text: str) -> str:
    if len(text) < 32:
        raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
    return text


def secret_file(text: str) -> str:
    """The secret held in file `text` (surrounding whitespace dropped), checked as `secret`."""
    if not text:
        raise ValueError("must name a file holding the secret")
    try:
        content = Path(text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot be read: {reason}") from None
    return secret(content.strip())


def networks(text: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or networks (`10.0.0.0/8`), as given."""
    parts = csv(text)
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or network") from None
    return parts


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """One of `options`, in any case, spelled as `options` spells it."""
    canonical = {option.lower(): option for option in options}

    def parse(text: str) -> str:
        if text.lower() not in canonical:
            raise ValueError(f"choose from {', '.join(options)}")
        return canonical[text.lower()]

    return parse
