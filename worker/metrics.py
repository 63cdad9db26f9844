"""Prometheus metrics of the worker: what platform teams alert and scale on.

Consumer lag is left to the broker's exporters (it is a property of the
group, not of one replica); these say what each replica does with its share.
`worker.health` serves them, beside the liveness and readiness probes.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.verdicts import Verdict

__all__ = ["Metrics"]


class Metrics:
    """The worker's instruments, on their own registry so tests can read them in isolation."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.verdicts = Counter(
            "itmguard_verdicts",
            "Verdicts written, by model, its role (primary or shadow) and outcome.",
            ["model_id", "role", "verdict"],
            registry=r,
        )
        self.dead_letters = Counter(
            "itmguard_dead_letters", "Posts dead-lettered, by reason code.", ["reason"], registry=r
        )
        self.batch_seconds = Histogram(
            "itmguard_batch_seconds",
            "Wall time of one batch, from receipt to durable.",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.score_seconds = Histogram(
            "itmguard_score_seconds",
            "Decode and inference time of one batch.",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = Histogram(
            "itmguard_batch_size",
            "Posts per batch.",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.retries = Counter(
            "itmguard_retries", "Retries of an infrastructure step.", ["step"], registry=r
        )
        self.model_info = Gauge(
            "itmguard_model_info",
            "The loaded models, the primary and any shadow; always 1.",
            ["model_id", "provider", "role"],
            registry=r,
        )
        self.warmup_seconds = Gauge(
            "itmguard_warmup_seconds",
            "Time the start-up warm-up batch took, at the shape real batches will have.",
            registry=r,
        )
        self.shadow_failures = Counter(
            "itmguard_shadow_failures",
            "Times the shadow model fell short, by reason: load (a start without it), error, "
            "late and busy (a batch without its verdicts), inference (a batch where it gave "
            "no probability for some posts).",
            ["reason"],
            registry=r,
        )
        self.tensorrt_engine_seconds = Gauge(
            "itmguard_tensorrt_engine_seconds",
            "Time the start spent on the TensorRT engine (session opening plus warm-up): "
            "cache=cold when it was built, cache=warm when loaded from the engine cache.",
            ["cache"],
            registry=r,
        )

    def record_batch(
        self,
        *,
        size: int,
        verdicts: Sequence[Verdict],
        dead_letter_reasons: Sequence[str],
        score_s: float,
        total_s: float,
    ) -> None:
        """Count one durable batch: `verdicts` one per post (the last outcome of each),
        `dead_letter_reasons` one per record that could not be scored."""
        self.batch_size.observe(size)
        self.score_seconds.observe(score_s)
        self.batch_seconds.observe(total_s)
        for verdict in verdicts:
            self.verdicts.labels(verdict.model_id, verdict.role, verdict.verdict).inc()
        for reason in dead_letter_reasons:
            self.dead_letters.labels(reason).inc()
