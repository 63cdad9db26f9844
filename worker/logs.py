"""structlog JSON logs for itmguard and for the libraries under it.

Faust, aiokafka and SQLAlchemy log through the standard library; routing them
through the same formatter gives operators one JSON stream to search.
"""

from __future__ import annotations

import logging.config
from typing import Any

import structlog

__all__ = ["configure_logging", "logging_dict"]

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def logging_dict(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` that renders every record as one JSON line on stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(),
                ],
                "foreign_pre_chain": _SHARED,
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # Alembic narrates every schema check at info; only its warnings matter to operators.
        "loggers": {"alembic": {"level": "WARNING"}},
    }


def configure_logging(level: str) -> None:
    """Send structlog and standard-library logs through one JSON formatter."""
    logging.config.dictConfig(logging_dict(level))
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.stdlib.filter_by_level,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # not cached: a logger resolves its configuration on each call, so that one
        # configured later (structlog.testing.capture_logs among them) reaches every
        # module's logger; the worker logs per batch, not per post, so it costs nothing
        cache_logger_on_first_use=False,
    )
