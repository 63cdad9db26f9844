"""Start-up before the consumer group: the warm-up batch, its shape, and its refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from worker.bundle import load_bundle
from worker.cli import main
from worker.errors import WarmupFailed
from worker.metrics import Metrics
from worker.runtime import engine_seconds, warm_up, warmup_shape
from worker.scoring import OnnxScorer

SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"


def test_the_warmup_runs_at_the_tensorrt_profiles_opt_shape() -> None:
    """With a TensorRT profile the warm-up takes its `opt` batch and sequence; without one,
    ITMGUARD_MAX_BATCH captions at the text encoder's longest."""
    spec = load_bundle(SHAPES_BUNDLE).spec
    assert spec.tensorrt_profile == {"batch": [1, 8, 32], "sequence": [1, 32, 64]}
    assert warmup_shape(spec, max_batch=16) == (8, 32)
    plain = dataclasses.replace(spec, raw={k: v for k, v in spec.raw.items() if k != "tensorrt"})
    assert warmup_shape(plain, max_batch=16) == (16, spec.text.max_tokens)


def test_the_warmup_is_timed_and_logged() -> None:
    """The warm-up scores one batch at its shape and logs `warmup_done` with the figures."""
    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    with capture_logs() as logs:
        batch, seconds = warm_up(scorer, max_batch=32)
    (done,) = [entry for entry in logs if entry["event"] == "warmup_done"]
    assert (batch, done["batch"], done["sequence"]) == (8, 8, 32)
    assert seconds > 0 and done["ms"] == round(seconds * 1000, 1)


class _OutOfRange:
    """An ONNX Runtime session stand-in whose model gives logits, not probabilities."""

    def run(self, _names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feed.values())).shape[0]
        return [np.full(batch, 3.5, dtype=np.float32)]


def test_a_model_without_probabilities_fails_the_warmup() -> None:
    """A model whose output is not a probability in [0, 1] fails the warm-up, not the first
    thousand posts."""
    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    scorer._session = _OutOfRange()  # type: ignore[assignment]
    with pytest.raises(WarmupFailed, match=r"8 pairs of 32 tokens\) failed: the model gave no"):
        scorer.warm_up(8, 32)


def test_a_bundle_that_cannot_run_its_profile_is_refused_at_start(tmp_path: Path) -> None:
    """`itmguard worker` with a bundle whose profile asks for captions longer than the model
    takes exits 1 with one line naming the bundle and the warm-up, and no traceback."""
    bundle = tmp_path / "bundle"
    shutil.copytree(SHAPES_BUNDLE, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["tensorrt"]["profile"]["sequence"] = [1, 4096, 4096]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(
        main,
        ["worker", "--bundle", str(bundle), "--providers", "cpu", "--metrics-port", "0"],
    )
    assert result.exit_code == 1, result.output
    assert f"Error: model bundle {bundle}: the warm-up batch (8 pairs of 4096 tokens)" in (
        result.output
    )
    assert "Traceback" not in result.output


def test_a_tensorrt_start_logs_how_long_its_engine_took_and_whether_it_was_cached(
    tmp_path: Path,
) -> None:
    """With TensorRT, the warm-up also logs `tensorrt_engine_ready`: the session's opening plus
    the warm-up batch, and whether the engine was built (cold) or loaded (warm)."""
    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    scorer.engine_cache, scorer.engine_dir = "cold", tmp_path
    with capture_logs() as logs:
        _, seconds = warm_up(scorer, max_batch=32)
    (ready,) = [entry for entry in logs if entry["event"] == "tensorrt_engine_ready"]
    assert (ready["cache"], ready["engine_dir"]) == ("cold", str(tmp_path))
    assert ready["ms"] == round(engine_seconds(scorer, seconds) * 1000, 1)
    assert engine_seconds(scorer, seconds) == scorer.open_seconds + seconds > seconds


def test_the_engine_time_is_a_metric_labelled_by_cache_state() -> None:
    """itmguard_tensorrt_engine_seconds carries a `cache` label, cold or warm."""
    metrics = Metrics()
    metrics.tensorrt_engine_seconds.labels("warm").set(1.5)
    value = metrics.registry.get_sample_value("itmguard_tensorrt_engine_seconds", {"cache": "warm"})
    assert value == 1.5
