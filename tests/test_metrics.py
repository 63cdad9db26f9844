"""Prometheus metrics from the batch path."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime

from worker.demo.embedded import free_port
from worker.health import Health, serve
from worker.metrics import Metrics
from worker.verdicts import Verdict

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def _verdict(verdict: str) -> Verdict:
    score = None if verdict == "error" else 0.4
    code = "invalid_event" if verdict == "error" else None
    return Verdict("p", "m@1", score, 0.5, verdict, code, NOW, None)  # type: ignore[arg-type]


def test_batches_count_verdicts_dead_letters_and_timings() -> None:
    """A recorded batch adds to the verdict and dead-letter counters and the histograms."""
    metrics = Metrics()
    metrics.record_batch(
        size=4,
        verdicts=[_verdict("match"), _verdict("mismatch"), _verdict("error")],
        dead_letter_reasons=["invalid_event", "invalid_json"],
        score_s=0.02,
        total_s=0.05,
    )
    value = metrics.registry.get_sample_value
    assert (
        value(
            "itmguard_verdicts_total", {"model_id": "m@1", "role": "primary", "verdict": "mismatch"}
        )
        == 1
    )
    assert (
        value("itmguard_verdicts_total", {"model_id": "m@1", "role": "primary", "verdict": "error"})
        == 1
    )
    assert value("itmguard_dead_letters_total", {"reason": "invalid_event"}) == 1
    assert value("itmguard_dead_letters_total", {"reason": "invalid_json"}) == 1
    assert value("itmguard_batch_size_sum") == 4
    assert value("itmguard_batch_seconds_count") == 1


def test_metrics_are_served_over_http() -> None:
    """The metrics port exposes the registry in the Prometheus text format."""
    metrics = Metrics()
    metrics.model_info.labels("m@1", "CPUExecutionProvider", "primary").set(1)
    metrics.warmup_seconds.set(0.25)
    port = free_port()
    server = serve("127.0.0.1", port, Health(), metrics.registry)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert (
        'itmguard_model_info{model_id="m@1",provider="CPUExecutionProvider",role="primary"} 1.0'
        in body
    )
    assert "itmguard_warmup_seconds 0.25" in body
