"""Command-line flags made from the settings table, shared by every command group.

Each command names the settings it reads; `settings_options` gives each one a
flag documented from the setting itself, and `load_settings` reads flags over
the environment and sets up logging, so every command behaves alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from worker.config import SETTINGS, Settings
from worker.logs import configure_logging

__all__ = ["DB_ENVS", "SCORE_ENVS", "WORKER_ENVS", "load_settings", "settings_options"]

F = TypeVar("F", bound=Callable[..., Any])

_REVIEW_ONLY = ("ITMGUARD_MODERATOR", "ITMGUARD_REVIEW_")
WORKER_ENVS = tuple(spec.env for spec in SETTINGS if not spec.env.startswith(_REVIEW_ONLY))
SCORE_ENVS = (
    "ITMGUARD_BUNDLE",
    "ITMGUARD_THRESHOLD",
    "ITMGUARD_PROVIDERS",
    "ITMGUARD_TRT_CACHE_DIR",
    "ITMGUARD_CPU_THREADS",
    "ITMGUARD_CPU_MEMORY_ARENA",
    "ITMGUARD_EXPLAIN_VARIANTS",
    "ITMGUARD_MAX_BATCH",
    "ITMGUARD_IMAGE_MAX_BYTES",
    "ITMGUARD_IMAGE_MAX_PIXELS",
    "ITMGUARD_IMAGE_ALLOW_HOSTS",
    "ITMGUARD_IMAGE_ALLOW_HTTP",
    "ITMGUARD_IMAGE_TIMEOUT_S",
    "ITMGUARD_IMAGE_CONNECT_TIMEOUT_S",
    "ITMGUARD_IMAGE_MAX_REDIRECTS",
    "ITMGUARD_IMAGE_RETRIES",
    "ITMGUARD_LOG_LEVEL",
)
DB_ENVS = ("ITMGUARD_DATABASE_URL", "ITMGUARD_LOG_LEVEL")


def settings_options(envs: tuple[str, ...]) -> Callable[[F], F]:
    """Add one flag per setting in `envs`, documented from the setting itself.

    Settings marked `env_only` (secrets) get no flag: a command line shows in
    `ps` to every user of the machine, the environment does not.
    """

    def decorate(func: F) -> F:
        for spec in reversed([s for s in SETTINGS if s.env in envs and not s.env_only]):
            func = click.option(
                spec.flag,
                spec.env,
                default=None,
                metavar="VALUE",
                help=f"{spec.help} [env {spec.env}]",
            )(func)
        return func

    return decorate


def load_settings(flags: dict[str, str | None]) -> Settings:
    """Settings from the environment with `flags` winning; logging configured from them."""
    settings = Settings.from_env(os.environ, flags)
    configure_logging(settings.log_level)
    return settings
