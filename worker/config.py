"""The one settings object, read from environment variables and CLI flags.

Every setting has an environment variable and a flag of the same name
(`ITMGUARD_MAX_BATCH` / `--max-batch`); flags win. Values are parsed and
checked once, at start, so a bad value stops the process with a message that
names the setting instead of failing later inside a batch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.parsers import (
    boolean,
    bootstrap_servers,
    choice,
    choices,
    csv,
    database_url,
    float_in,
    int_in,
    matching,
    nonempty,
    optional,
    secret,
    topic_name,
)

__all__ = [
    "DEFAULT_FETCH_LIMITS",
    "DEFAULT_TRT_CACHE_DIR",
    "MODERATOR_NAME",
    "PROVIDERS",
    "REVIEW_ORDERS",
    "SETTINGS",
    "FetchLimits",
    "SettingSpec",
    "Settings",
]

PROVIDERS = ("tensorrt", "cuda", "cpu")
LOG_LEVELS = ("debug", "info", "warning", "error")
REVIEW_ORDERS = ("score", "age")
MODERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MODERATOR_RULE = "1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class FetchLimits:
    """What one image may cost to fetch and decode, and where it may come from."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    max_redirects: int = 3
    retries: int = 2
    allow_http: bool = False
    allow_hosts: tuple[str, ...] = ()


DEFAULT_FETCH_LIMITS = FetchLimits()

DEFAULT_TRT_CACHE_DIR = Path.home() / ".cache" / "itmguard" / "tensorrt"
"""Where TensorRT engines and timing caches go unless ITMGUARD_TRT_CACHE_DIR says otherwise."""


@dataclass(frozen=True)
class Settings:
    """Everything a worker, the scorer and the CLI need to run."""

    kafka_bootstrap: tuple[str, ...] = ("127.0.0.1:9092",)
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/itmguard"
    bundle: Path | None = None
    posts_topic: str = "posts"
    flags_topic: str = "moderation-flags"
    dlq_topic: str = "posts-dlq"
    group_id: str = "itmguard"
    max_batch: int = 32
    max_wait_ms: int = 200
    threshold: float | None = None
    providers: tuple[str, ...] = PROVIDERS
    trt_cache_dir: Path = DEFAULT_TRT_CACHE_DIR
    cpu_threads: int = 0
    cpu_memory_arena: bool = True
    fetch_limits: FetchLimits = field(default_factory=FetchLimits)
    session_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9108
    heartbeat_s: float = 1.0
    log_level: str = "info"
    moderator: str | None = None
    review_lease_s: float = 300.0
    review_order: str = "score"
    review_host: str = "127.0.0.1"
    review_port: int = 8080
    review_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], overrides: Mapping[str, str | None] | None = None
    ) -> Settings:
        """Build settings from `environ`, with `overrides` (keyed by env name) winning.

        Raises:
            ConfigError: a value does not parse or is out of range.
        """
        raw = {k: v for k, v in environ.items() if k.startswith("ITMGUARD_")}
        raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
        values: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for spec in SETTINGS:
            if spec.env not in raw:
                continue
            try:
                value = spec.parse(raw[spec.env].strip())
            except ValueError as exc:
                shown = "***" if spec.secret else raw[spec.env]
                raise ConfigError(spec.env, shown, str(exc)) from None
            if spec.attr.startswith("fetch_limits."):
                limits[spec.attr.split(".", 1)[1]] = value
            else:
                values[spec.attr] = value
        if limits:
            values["fetch_limits"] = FetchLimits(**limits)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.heartbeat_s * 3 > self.session_timeout_s:
            raise ConfigError(
                "ITMGUARD_HEARTBEAT_S",
                self.heartbeat_s,
                f"must be at most a third of ITMGUARD_SESSION_TIMEOUT_S ({self.session_timeout_s})",
            )

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["database_url"] = _mask_url(self.database_url)
        shown["review_secret"] = None if self.review_secret is None else "***"
        body = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Settings({body})"


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url  # only where a database URL is read or shown

    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its env variable, the Settings attribute it fills, its parser."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("ITMGUARD_").lower().replace("_", "-")


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec(
        "ITMGUARD_KAFKA_BOOTSTRAP",
        "kafka_bootstrap",
        bootstrap_servers,
        "Kafka bootstrap servers, host:port[,host:port]",
    ),
    SettingSpec(
        "ITMGUARD_DATABASE_URL",
        "database_url",
        database_url,
        "Postgres as a SQLAlchemy URL, postgresql+psycopg://user:pass@host:5432/db",
    ),
    SettingSpec(
        "ITMGUARD_BUNDLE",
        "bundle",
        lambda t: Path(nonempty(t)),
        "model bundle directory (model.onnx, tokenizer.json, bundle.json)",
    ),
    SettingSpec(
        "ITMGUARD_POSTS_TOPIC", "posts_topic", topic_name, "topic the post events arrive on"
    ),
    SettingSpec(
        "ITMGUARD_FLAGS_TOPIC", "flags_topic", topic_name, "topic mismatch flags are sent to"
    ),
    SettingSpec(
        "ITMGUARD_DLQ_TOPIC",
        "dlq_topic",
        topic_name,
        "dead-letter topic for posts that could not be scored",
    ),
    SettingSpec(
        "ITMGUARD_GROUP_ID",
        "group_id",
        topic_name,
        "Kafka consumer group shared by all worker replicas",
    ),
    SettingSpec(
        "ITMGUARD_MAX_BATCH", "max_batch", int_in(1, 1024), "most posts scored in one model call"
    ),
    SettingSpec(
        "ITMGUARD_MAX_WAIT_MS",
        "max_wait_ms",
        int_in(1, 60_000),
        "longest wait, in ms, for a batch to fill before it is scored",
    ),
    SettingSpec(
        "ITMGUARD_THRESHOLD",
        "threshold",
        optional(float_in(0.0, 1.0)),
        "match probability below which a post is a mismatch; empty: the bundle's",
    ),
    SettingSpec(
        "ITMGUARD_PROVIDERS",
        "providers",
        choices(PROVIDERS),
        "ONNX Runtime execution providers allowed, in order of preference",
    ),
    SettingSpec(
        "ITMGUARD_TRT_CACHE_DIR",
        "trt_cache_dir",
        lambda t: Path(nonempty(t)),
        "directory for TensorRT engine and timing caches",
    ),
    SettingSpec(
        "ITMGUARD_CPU_THREADS",
        "cpu_threads",
        int_in(0, 1024),
        "threads one model call uses on the CPU; 0: one per core of the machine, "
        "which in a container is the node's, not its CPU limit",
    ),
    SettingSpec(
        "ITMGUARD_CPU_MEMORY_ARENA",
        "cpu_memory_arena",
        boolean,
        "keep ONNX Runtime's CPU memory arena: faster model calls, more resident memory",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_MAX_BYTES",
        "fetch_limits.max_bytes",
        int_in(1, 1 << 30),
        "largest encoded image accepted, in bytes",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_MAX_PIXELS",
        "fetch_limits.max_pixels",
        int_in(1, 1 << 32),
        "largest decoded image accepted, in pixels (width x height)",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_ALLOW_HOSTS",
        "fetch_limits.allow_hosts",
        csv,
        "image hosts (names, addresses or networks) allowed even on private or "
        "loopback addresses, comma separated",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_ALLOW_HTTP",
        "fetch_limits.allow_http",
        boolean,
        "fetch image URLs over plain http too (https only by default)",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_TIMEOUT_S",
        "fetch_limits.timeout_s",
        float_in(0.1, 300.0),
        "total time allowed for one image fetch, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_CONNECT_TIMEOUT_S",
        "fetch_limits.connect_timeout_s",
        float_in(0.1, 60.0),
        "time allowed to connect to an image host, in seconds",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_MAX_REDIRECTS",
        "fetch_limits.max_redirects",
        int_in(0, 10),
        "redirects followed per image URL",
    ),
    SettingSpec(
        "ITMGUARD_IMAGE_RETRIES",
        "fetch_limits.retries",
        int_in(0, 5),
        "retries of an image fetch after a transient failure (timeout, 5xx, 429)",
    ),
    SettingSpec(
        "ITMGUARD_SESSION_TIMEOUT_S",
        "session_timeout_s",
        float_in(1.0, 300.0),
        "Kafka consumer session timeout in seconds",
    ),
    SettingSpec(
        "ITMGUARD_SHUTDOWN_GRACE_S",
        "shutdown_grace_s",
        float_in(0.0, 3600.0),
        "after SIGTERM, how long a batch that cannot be written keeps retrying before "
        "the worker abandons it uncommitted and exits",
    ),
    SettingSpec(
        "ITMGUARD_METRICS_HOST",
        "metrics_host",
        nonempty,
        "address the Prometheus /metrics endpoint listens on",
    ),
    SettingSpec(
        "ITMGUARD_METRICS_PORT",
        "metrics_port",
        int_in(0, 65535),
        "port of the Prometheus /metrics endpoint; 0 turns it off",
    ),
    SettingSpec(
        "ITMGUARD_HEARTBEAT_S",
        "heartbeat_s",
        float_in(0.1, 60.0),
        "Kafka consumer heartbeat interval in seconds",
    ),
    SettingSpec("ITMGUARD_LOG_LEVEL", "log_level", choice(LOG_LEVELS), "log level"),
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
        "key that signs review-page session cookies, at least 32 characters",
        secret=True,
    ),
)
