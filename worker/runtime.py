"""Assemble the worker from settings: scorer, database, Faust app, and run it."""

from __future__ import annotations

import faust
import structlog

from worker.bundle import BundleSpec, load_bundle
from worker.config import Settings
from worker.errors import ConfigError
from worker.logs import logging_dict
from worker.metrics import Metrics
from worker.persistence import check_schema_current, create_engine
from worker.scoring import ORT_PROVIDERS, OnnxScorer

__all__ = ["build_app", "check_max_batch", "open_scorer", "run_worker"]

log = structlog.get_logger(__name__)


def open_scorer(settings: Settings) -> OnnxScorer:
    """Load and check the bundle named by the settings.

    Raises:
        ConfigError: no bundle is configured, or no allowed provider is available.
        BundleError: the bundle is missing files, has bad fields or a wrong hash.
    """
    if settings.bundle is None:
        raise ConfigError("ITMGUARD_BUNDLE", None, "a model bundle directory is required")
    bundle = load_bundle(settings.bundle)
    scorer = OnnxScorer(
        bundle,
        providers=settings.providers,
        threshold=settings.threshold,
        trt_cache_dir=settings.trt_cache_dir,
        cpu_threads=settings.cpu_threads,
        cpu_memory_arena=settings.cpu_memory_arena,
    )
    check_max_batch(bundle.spec, scorer.provider, settings.max_batch)
    return scorer


def check_max_batch(spec: BundleSpec, provider: str, max_batch: int) -> None:
    """Refuse a batch larger than the TensorRT engine was built for, before the first batch
    fails on it.

    Raises:
        ConfigError: `provider` is TensorRT and `max_batch` exceeds the bundle's profile.
    """
    profile = spec.raw.get("tensorrt", {}).get("profile")
    if provider == ORT_PROVIDERS["tensorrt"] and profile and max_batch > profile["batch"][2]:
        raise ConfigError(
            "ITMGUARD_MAX_BATCH",
            max_batch,
            f"exceeds the bundle's TensorRT profile ({profile['batch'][2]}); lower it or "
            "re-export with a larger --max-batch",
        )


def build_app(settings: Settings) -> faust.App:
    """Everything checked before joining the consumer group: bundle, providers, schema.

    Metrics are served from here when a port is set, so `faust -A worker.faustapp`
    exposes them too.
    """
    from worker.agents import create_app

    scorer = open_scorer(settings)
    engine = create_engine(settings.database_url)
    check_schema_current(engine)
    metrics = Metrics()
    if settings.metrics_port:
        metrics.serve(settings.metrics_host, settings.metrics_port)
    log.info("worker_configured", settings=repr(settings), metrics_port=settings.metrics_port)
    return create_app(settings, scorer, engine, metrics)


def run_worker(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; Faust drains the batch in flight before it stops."""
    app = build_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.upper(),
        logging_config=logging_dict(settings.log_level),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
