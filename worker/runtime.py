"""Assemble the worker from settings: scorer, database, Faust app, and run it."""

from __future__ import annotations

import functools
import time

import faust
import structlog

from worker.bundle import BundleSpec, load_bundle
from worker.config import Settings
from worker.errors import ConfigError
from worker.health import CachedCheck, Health, scoring_bound_s, serve
from worker.kafka_security import check as check_kafka_security
from worker.logs import logging_dict
from worker.metrics import Metrics
from worker.persistence import check_schema_current, create_engine, create_probe_engine
from worker.scoring import ORT_PROVIDERS, OnnxScorer
from worker.shadow import open_shadow
from worker.verdicts import Role

__all__ = [
    "build_app",
    "check_max_batch",
    "engine_seconds",
    "open_scorer",
    "run_worker",
    "warm_up",
    "warmup_shape",
]

log = structlog.get_logger(__name__)


def open_scorer(settings: Settings, role: Role = "primary") -> OnnxScorer:
    """Load and check the bundle the settings name for `role`: ITMGUARD_BUNDLE and
    ITMGUARD_THRESHOLD, or ITMGUARD_SHADOW_BUNDLE and ITMGUARD_SHADOW_THRESHOLD.

    Raises:
        ConfigError: no bundle is configured, no allowed provider is available, or the
            required provider is missing or could not be loaded.
        BundleError: the bundle is missing files, has bad fields or a wrong hash.
    """
    shadow = role == "shadow"
    path = settings.shadow_bundle if shadow else settings.bundle
    if path is None:
        name = "ITMGUARD_SHADOW_BUNDLE" if shadow else "ITMGUARD_BUNDLE"
        raise ConfigError(name, None, "a model bundle directory is required")
    bundle = load_bundle(path)
    with structlog.contextvars.bound_contextvars(role=role):
        scorer = OnnxScorer(
            bundle,
            providers=settings.providers,
            threshold=settings.shadow_threshold if shadow else settings.threshold,
            trt_cache_dir=settings.trt_cache_dir,
            cpu_threads=settings.cpu_threads,
            cpu_memory_arena=settings.cpu_memory_arena,
            require_provider=settings.require_provider,
            tensorrt=settings.tensorrt,
            # a shadow's verdicts are only stored: explaining its mismatches would be wasted
            explain_variants=0 if shadow else settings.explain_variants,
        )
    check_max_batch(bundle.spec, scorer.provider, settings.max_batch)
    return scorer


def check_max_batch(spec: BundleSpec, provider: str, max_batch: int) -> None:
    """Refuse a batch larger than the TensorRT engine was built for, before the first batch
    fails on it.

    Raises:
        ConfigError: `provider` is TensorRT and `max_batch` exceeds the bundle's profile.
    """
    profile = spec.tensorrt_profile
    if provider == ORT_PROVIDERS["tensorrt"] and profile and max_batch > profile["batch"][2]:
        raise ConfigError(
            "ITMGUARD_MAX_BATCH",
            max_batch,
            f"exceeds the bundle's TensorRT profile ({profile['batch'][2]}); lower it or "
            "re-export with a larger --max-batch",
        )


def warmup_shape(spec: BundleSpec, max_batch: int) -> tuple[int, int]:
    """The warm-up's batch size and caption length: the TensorRT profile's `opt` shape, which
    its engine is tuned for, or else `max_batch` captions of the text encoder's longest."""
    profile = spec.tensorrt_profile
    if profile:
        return profile["batch"][1], profile["sequence"][1]
    return max_batch, spec.text.max_tokens


def warm_up(scorer: OnnxScorer, max_batch: int) -> tuple[int, float]:
    """Score one batch at `warmup_shape`, so the first real batch is not the slow one.

    Returns the batch size and the seconds it took. On TensorRT it also logs
    `tensorrt_engine_ready`: the session's opening plus this batch, the time a start spends
    on the engine, built ("cold") or loaded from the engine cache ("warm").

    Raises:
        WarmupFailed: the model failed on it; the worker must not start.
    """
    batch, sequence = warmup_shape(scorer.bundle.spec, max_batch)
    started = time.perf_counter()
    scorer.warm_up(batch, sequence)
    seconds = time.perf_counter() - started
    log.info("warmup_done", ms=round(seconds * 1000, 1), batch=batch, sequence=sequence)
    if scorer.engine_cache is not None:
        log.info(
            "tensorrt_engine_ready",
            cache=scorer.engine_cache,
            ms=round(engine_seconds(scorer, seconds) * 1000, 1),
            engine_dir=str(scorer.engine_dir),
        )
    return batch, seconds


def engine_seconds(scorer: OnnxScorer, warmup_s: float) -> float:
    """Seconds a start spent on its TensorRT engine: the session's opening, where ONNX Runtime
    builds or loads an engine with explicit profiles, plus the warm-up batch, where it would
    build one without them."""
    return scorer.open_seconds + warmup_s


def build_app(settings: Settings) -> faust.App:
    """Everything checked before joining the consumer group: Kafka security, bundle, a
    warm-up batch, schema; and the shadow bundle, when one is set, which is left out
    (logged and counted) rather than stop the worker when it cannot be used.

    The probes and metrics are served from here, first, when a port is set (so
    `faust -A worker.faustapp` serves them too): `/readyz` answers 503 while the
    bundle loads.
    """
    check_kafka_security(settings.kafka_security)
    metrics = Metrics()
    database = functools.partial(check_schema_current, create_probe_engine(settings.database_url))
    health = Health(database=CachedCheck(database, passed="at this release's schema revision"))
    if settings.metrics_port:
        try:
            serve(settings.metrics_host, settings.metrics_port, health, metrics.registry)
        except OSError as exc:
            where = f"cannot listen on {settings.metrics_host}: {exc.strerror or exc}"
            raise ConfigError("ITMGUARD_METRICS_PORT", settings.metrics_port, where) from None
    scorer = open_scorer(settings)
    health.bundle_loaded(scorer.model_id, scorer.provider)
    batch, seconds = warm_up(scorer, settings.max_batch)
    metrics.warmup_seconds.set(seconds)
    if scorer.engine_cache is not None:
        metrics.tensorrt_engine_seconds.labels(scorer.engine_cache).set(
            engine_seconds(scorer, seconds)
        )
    shadow = None
    if settings.shadow_bundle is not None:

        def load_shadow() -> OnnxScorer:
            with structlog.contextvars.bound_contextvars(role="shadow"):
                loaded = open_scorer(settings, "shadow")
                warm_up(loaded, settings.max_batch)
            return loaded

        shadow = open_shadow(load_shadow, scorer, settings.shadow_wait_s, metrics)
    scale = max(1.0, settings.max_batch / batch)
    health.warmed_up(seconds, scoring_bound_s(settings.fetch_limits, seconds, scale))
    engine = create_engine(settings.database_url, pre_ping=False)
    check_schema_current(engine)
    log.info("worker_configured", settings=repr(settings), metrics_port=settings.metrics_port)
    from worker.agents import create_app

    return create_app(settings, scorer, engine, metrics, health, shadow)


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
