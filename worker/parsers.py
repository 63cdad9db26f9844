"""Parsers of setting values: text in, a value out, or a ValueError that says what is accepted.

`worker.config` names which parser each setting uses; the message of the
ValueError becomes the end of the one-line refusal a bad value gets at start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
    "matching",
    "nonempty",
    "optional",
    "secret",
    "topic_name",
]


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
    except ArgumentError:
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


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    """One of `options`, in any case, spelled as `options` spells it."""
    canonical = {option.lower(): option for option in options}

    def parse(text: str) -> str:
        if text.lower() not in canonical:
            raise ValueError(f"choose from {', '.join(options)}")
        return canonical[text.lower()]

    return parse
