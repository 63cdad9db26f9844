"""The one settings object, read from environment variables and CLI flags.

Every setting has an environment variable and a flag of the same name
(`ITMGUARD_MAX_BATCH` / `--max-batch`); flags win. Values are parsed and
checked once, at start, so a bad value stops the process with a message that
names the setting instead of failing later inside a batch. Which settings
exist, and how each is parsed, is the table in `worker.settings_table`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.kafka_security import KafkaSecurity
from worker.parsers import mask_url
from worker.settings_table import MODERATOR_NAME, PROVIDERS, REVIEW_ORDERS, SETTINGS, SettingSpec

__all__ = [
    "DEFAULT_EXPLAIN_VARIANTS",
    "DEFAULT_FETCH_LIMITS",
    "DEFAULT_REVIEW_REASONS",
    "DEFAULT_TENSORRT",
    "DEFAULT_TRT_CACHE_DIR",
    "MODERATOR_NAME",
    "PROVIDERS",
    "REVIEW_ORDERS",
    "SETTINGS",
    "FetchLimits",
    "SettingSpec",
    "Settings",
    "TensorRtTuning",
]


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


@dataclass(frozen=True)
class TensorRtTuning:
    """What the settings say about TensorRT engine builds, beside what the bundle says.

    fp16: build fp16 engines; None keeps the bundle's `tensorrt.fp16`.
    workspace_mb: most scratch memory one layer may use while built, in MiB; 0 leaves
        TensorRT's own limit.
    builder_level: TensorRT's builder optimisation level (0-5): higher levels try more
        kernels, taking longer to build for a faster engine; 3 is TensorRT's default.
    """

    fp16: bool | None = None
    workspace_mb: int = 0
    builder_level: int = 3


DEFAULT_TENSORRT = TensorRtTuning()
"""No fp16 override, TensorRT's own workspace limit and builder level."""


DEFAULT_EXPLAIN_VARIANTS = 8
"""Caption variants scored per flagged post to explain it (`worker.explain`)."""


DEFAULT_TRT_CACHE_DIR = Path.home() / ".cache" / "itmguard" / "tensorrt"
"""Where TensorRT engines and timing caches go unless ITMGUARD_TRT_CACHE_DIR says otherwise."""


DEFAULT_REVIEW_REASONS = (
    "misleading_context",
    "manipulated_media",
    "impersonation",
    "spam_scam",
    "graphic_content",
    "other_policy",
)
"""Policy categories of a confirmed mismatch unless ITMGUARD_REVIEW_REASONS lists others."""


@dataclass(frozen=True)
class Settings:
    """Everything a worker, the scorer and the CLI need to run."""

    kafka_bootstrap: tuple[str, ...] = ("127.0.0.1:9092",)
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/itmguard"
    bundle: Path | None = None
    posts_topic: str = "posts"
    flags_topic: str = "moderation-flags"
    dlq_topic: str = "posts-dlq"
    decisions_topic: str = "moderation-decisions"
    group_id: str = "itmguard"
    group_instance_id: str | None = None
    max_batch: int = 32
    max_wait_ms: int = 200
    threshold: float | None = None
    shadow_bundle: Path | None = None
    shadow_threshold: float | None = None
    shadow_wait_s: float = 2.0
    explain_variants: int = DEFAULT_EXPLAIN_VARIANTS
    providers: tuple[str, ...] = PROVIDERS
    trt_cache_dir: Path = DEFAULT_TRT_CACHE_DIR
    require_provider: str | None = None
    tensorrt: TensorRtTuning = field(default_factory=TensorRtTuning)
    cpu_threads: int = 0
    decode_threads: int = 0
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
    review_reasons: tuple[str, ...] = DEFAULT_REVIEW_REASONS
    review_require_reason: bool = True
    review_undo_s: float = 60.0
    review_second_opinion_share: float = 0.0
    review_host: str = "127.0.0.1"
    review_port: int = 8080
    review_secret: str | None = field(default=None, repr=False)
    review_idle_s: float = 1800.0
    review_trusted_proxies: tuple[str, ...] = ()

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
        groups: dict[str, dict[str, Any]] = {}
        given: dict[str, str] = {}
        for spec in SETTINGS:
            if spec.env not in raw:
                continue
            shown = "***" if spec.secret else mask_url(raw[spec.env])
            try:
                value = spec.parse(raw[spec.env].strip())
            except ValueError as exc:
                raise ConfigError(spec.env, shown, str(exc)) from None
            if spec.attr in given:  # two settings that fill one value, such as a secret's file
                raise ConfigError(spec.env, shown, f"set only one of {given[spec.attr]} and it")
            given[spec.attr] = spec.env
            group, dot, name = spec.attr.partition(".")
            if dot:
                groups.setdefault(group, {})[name] = value
            else:
                values[spec.attr] = value
        for group, fields in groups.items():
            values[group] = _GROUPS[group](**fields)
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
        shown["database_url"] = mask_url(self.database_url)
        shown["review_secret"] = None if self.review_secret is None else "***"
        body = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"Settings({body})"


_GROUPS: dict[str, Callable[..., Any]] = {
    "fetch_limits": FetchLimits,
    "tensorrt": TensorRtTuning,
    "kafka_security": KafkaSecurity,
}
"""The value objects that settings named `group.field` fill."""
