"""Execution providers: the options each gets, forced providers, the TensorRT cache key, and
the IO-binding path that GPU providers use (run here on the CPU)."""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from worker.bundle import load_bundle
from worker.config import Settings, TensorRtTuning
from worker.errors import ConfigError
from worker.iobinding import BoundRun, CudaHostPinner, HostStaging
from worker.preprocess import preprocess_images
from worker.providers import (
    ORT_PROVIDERS,
    EngineKey,
    choose_providers,
    cuda_options,
    engine_cache_warm,
    probe_gpu,
    provider_options,
    tensorrt_options,
    tensorrt_version,
)
from worker.scoring import OnnxScorer
from worker.testing import shape_image

SHAPES_BUNDLE = Path(__file__).parent / "data" / "shapes-itm"
ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
KEY = EngineKey("ab" * 32, "NVIDIA H100 80GB HBM3", "9.0", "10.9.0.34", "1.26.0")


def test_tensorrt_options_carry_the_bundles_profiles_and_the_settings(tmp_path: Path) -> None:
    """TensorRT gets the bundle's min/opt/max shapes, its caches under the key's directory,
    fp16 as the bundle says unless a setting overrides it, the builder level, and a workspace
    limit only when one is set."""
    spec = load_bundle(SHAPES_BUNDLE).spec
    options = tensorrt_options(spec, tmp_path / KEY.dirname, TensorRtTuning())
    assert options["trt_profile_opt_shapes"] == (
        "pixel_values:8x3x96x96,input_ids:8x32,attention_mask:8x32"
    )
    assert options["trt_profile_max_shapes"].startswith("pixel_values:32x3x96x96")
    assert options["trt_engine_cache_path"] == str(tmp_path / KEY.dirname / "engines")
    assert options["trt_timing_cache_path"] == str(tmp_path / KEY.dirname / "timing")
    assert (tmp_path / KEY.dirname / "engines").is_dir()
    assert options["trt_engine_cache_enable"] is options["trt_timing_cache_enable"] is True
    assert options["trt_fp16_enable"] is bool(spec.raw["tensorrt"].get("fp16", False))
    assert options["trt_builder_optimization_level"] == 3
    assert "trt_max_workspace_size" not in options
    tuned = tensorrt_options(
        spec, tmp_path, TensorRtTuning(fp16=True, workspace_mb=2048, builder_level=5)
    )
    assert tuned["trt_fp16_enable"] is True
    assert tuned["trt_max_workspace_size"] == 2048 * 2**20
    assert tuned["trt_builder_optimization_level"] == 5
    no_fp16 = dataclasses.replace(spec, raw={**spec.raw, "tensorrt": {"fp16": True}})
    assert tensorrt_options(no_fp16, tmp_path, TensorRtTuning(fp16=False))["trt_fp16_enable"] is (
        False
    )


def test_cuda_searches_convolutions_and_grows_its_arena_by_need() -> None:
    """CUDA keeps cuDNN's fastest convolution after an exhaustive search, and its arena grows
    by what is asked, not to the next power of two."""
    assert cuda_options() == {
        "device_id": 0,
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
    }


def test_each_provider_gets_its_own_options_in_order(tmp_path: Path) -> None:
    """TensorRT, CUDA and CPU options come in the providers' order; the CPU gets none, and
    TensorRT without a cache directory is refused."""
    spec = load_bundle(SHAPES_BUNDLE).spec
    trt, cuda, cpu = provider_options(ALL, spec, tmp_path, TensorRtTuning())
    assert "trt_profile_min_shapes" in trt and cuda == cuda_options() and cpu == {}
    assert provider_options(ALL[1:], spec, None, TensorRtTuning()) == [cuda_options(), {}]
    with pytest.raises(ValueError, match="engine cache directory"):
        provider_options(ALL[:1], spec, None, TensorRtTuning())


def test_allowed_providers_keep_their_order_and_skip_the_missing() -> None:
    """Without a required provider, the allowed ones this onnxruntime offers are used in the
    settings' order; none offered is a ConfigError on ITMGUARD_PROVIDERS."""
    assert choose_providers(("tensorrt", "cuda", "cpu"), ALL[1:]) == ALL[1:]
    with pytest.raises(ConfigError, match="ITMGUARD_PROVIDERS='tensorrt,cuda': none"):
        choose_providers(("tensorrt", "cuda"), ["CPUExecutionProvider"])


def test_a_required_provider_goes_first_with_the_later_ones_behind_it() -> None:
    """A required provider leads; the allowed providers after it stay as fallbacks for the
    nodes it cannot run, and those before it are dropped."""
    assert choose_providers(("tensorrt", "cuda", "cpu"), ALL, required="cuda") == ALL[1:]
    assert choose_providers(("cpu",), ALL, required="tensorrt") == ALL[:1]


def test_a_required_provider_this_onnxruntime_lacks_is_refused_clearly() -> None:
    """Requiring TensorRT from a CPU-only onnxruntime is a ConfigError that names the setting,
    the missing provider, what is offered and what to install."""
    with pytest.raises(ConfigError) as caught:
        choose_providers(("tensorrt", "cuda", "cpu"), ["CPUExecutionProvider"], required="tensorrt")
    assert caught.value.setting == "ITMGUARD_REQUIRE_PROVIDER"
    message = str(caught.value)
    assert "has no TensorrtExecutionProvider (it offers CPUExecutionProvider)" in message
    assert "onnxruntime-gpu" in message and "docs/gpu-setup.md" in message


def test_the_scorer_refuses_a_required_provider_before_loading_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OnnxScorer with require_provider=cuda on an onnxruntime that offers only the CPU stops
    with the same ConfigError; requiring the CPU scores on it."""
    bundle = load_bundle(SHAPES_BUNDLE)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [ORT_PROVIDERS["cpu"]])
    with pytest.raises(ConfigError, match="REQUIRE_PROVIDER='cuda'"):
        OnnxScorer(bundle, require_provider="cuda")
    assert OnnxScorer(bundle, require_provider="cpu").provider == ORT_PROVIDERS["cpu"]


def test_the_settings_read_the_provider_and_tensorrt_variables() -> None:
    """ITMGUARD_REQUIRE_PROVIDER and the ITMGUARD_TRT_* tuning variables fill Settings; empty
    ones keep the defaults (no requirement, fp16 from the bundle)."""
    settings = Settings.from_env(
        {
            "ITMGUARD_REQUIRE_PROVIDER": "TensorRT",
            "ITMGUARD_TRT_FP16": "true",
            "ITMGUARD_TRT_WORKSPACE_MB": "4096",
            "ITMGUARD_TRT_BUILDER_LEVEL": "5",
        }
    )
    assert settings.require_provider == "tensorrt"
    assert settings.tensorrt == TensorRtTuning(fp16=True, workspace_mb=4096, builder_level=5)
    empty = Settings.from_env({"ITMGUARD_REQUIRE_PROVIDER": "", "ITMGUARD_TRT_FP16": ""})
    assert (empty.require_provider, empty.tensorrt) == (None, TensorRtTuning())
    with pytest.raises(ConfigError, match="ITMGUARD_TRT_BUILDER_LEVEL"):
        Settings.from_env({"ITMGUARD_TRT_BUILDER_LEVEL": "6"})


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"gpu_name": "NVIDIA H200"},
        {"compute_capability": "8.9"},
        {"tensorrt": "10.13.3.9"},
        {"onnxruntime": "1.25.1"},
    ],
)
def test_the_engine_directory_changes_with_anything_that_makes_an_engine_stale(
    change: dict[str, str],
) -> None:
    """Another model, GPU model, compute capability, TensorRT or ONNX Runtime release gives
    another engine directory."""
    assert dataclasses.replace(KEY, **change).dirname != KEY.dirname


def test_the_engine_directory_name_is_filesystem_safe() -> None:
    """The name holds letters, digits, '.' and '-' only, whatever the GPU calls itself."""
    assert KEY.dirname == "abababababababab-NVIDIA-H100-80GB-HBM3-sm90-trt10.9.0.34-ort1.26.0"
    odd = dataclasses.replace(KEY, gpu_name="../A/B: C*", tensorrt="")
    assert re.fullmatch(r"[A-Za-z0-9.-]+", odd.dirname)
    assert odd.dirname.endswith("-A-B-C-sm90-trtunknown-ort1.26.0")


def test_the_key_probes_the_gpu_and_tensorrt_through_injectable_probes() -> None:
    """EngineKey.probe asks its probes for the GPU and the TensorRT release."""
    key = EngineKey.probe(
        "ab" * 32, "1.26.0", gpu=lambda: ("NVIDIA H200", "9.0"), tensorrt=lambda: "10.9.0.34"
    )
    assert key == dataclasses.replace(KEY, gpu_name="NVIDIA H200")


def _smi(stdout: str, returncode: int = 0) -> Any:
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert "--query-gpu=name,compute_cap" in args and "--format=csv,noheader" in args
        return subprocess.CompletedProcess(args, returncode, stdout, "")

    return run


def test_nvidia_smi_gives_the_gpu_name_and_capability() -> None:
    """`nvidia-smi`'s CSV line becomes (name, capability); a failure or no nvidia-smi at all
    gives ("unknown", "unknown")."""
    assert probe_gpu(_smi("NVIDIA H100 80GB HBM3, 9.0\n")) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert probe_gpu(_smi("", returncode=9)) == ("unknown", "unknown")

    def missing(*_: Any, **__: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("nvidia-smi")

    assert probe_gpu(missing) == ("unknown", "unknown")


def test_the_tensorrt_release_comes_from_its_wheel_or_its_library() -> None:
    """The TensorRT wheel's version wins; without a wheel, libnvinfer's packed version is
    read; with neither, "unknown"."""

    def wheel(name: str) -> str:
        if name == "tensorrt-cu12-libs":
            return "10.9.0.34"
        raise metadata.PackageNotFoundError(name)

    def no_wheel(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    class _Nvinfer:
        def getInferLibVersion(self) -> int:
            return 100_900

    def no_library(_: str) -> Any:
        raise OSError("not found")

    assert tensorrt_version(wheel, no_library) == "10.9.0.34"
    assert tensorrt_version(no_wheel, lambda _: _Nvinfer()) == "10.9.0"
    assert tensorrt_version(no_wheel, no_library) == "unknown"


def test_an_engine_file_makes_the_cache_warm(tmp_path: Path) -> None:
    """The cache is warm once an engine file lies under the key's directory, cold before."""
    assert not engine_cache_warm(tmp_path / "absent")
    (tmp_path / "engines").mkdir()
    assert not engine_cache_warm(tmp_path)
    (tmp_path / "engines" / "TensorrtExecutionProvider_abc_sm90.engine").write_bytes(b"x")
    assert engine_cache_warm(tmp_path)


class _Pinner:
    """A Pinner that records what it locked and released."""

    def __init__(self) -> None:
        self.pinned: list[int] = []
        self.unpinned: list[int] = []

    def pin(self, buffer: np.ndarray) -> bool:
        self.pinned.append(buffer.nbytes)
        return True

    def unpin(self, buffer: np.ndarray) -> None:
        self.unpinned.append(buffer.nbytes)


def _feeds(scorer: OnnxScorer, batch: int, captions: list[str]) -> dict[str, np.ndarray]:
    spec = scorer.bundle.spec
    images = [
        Image.open(io.BytesIO(shape_image("red", "circle", seed=i))).convert("RGB")
        for i in range(batch)
    ]
    ids, mask = scorer.bundle.text_encoder().encode((captions * batch)[:batch])
    pixels = preprocess_images(images, spec.image)
    names = spec.input_names
    return {names["pixel_values"]: pixels, names["input_ids"]: ids, names["attention_mask"]: mask}


def test_io_binding_gives_the_scores_session_run_gives() -> None:
    """Through an IO binding on the CPU device, batches of different sizes and caption lengths
    score exactly as `session.run` scores them, with the host buffers pinned once and grown
    only when a larger batch comes."""
    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    session, output = scorer._session, scorer.bundle.spec.output_name
    pinner = _Pinner()
    staging = HostStaging(pinner)
    bound = BoundRun(session, output, device="cpu", staging=staging)
    for batch, captions in [
        (4, ["a red circle"]),
        (2, ["a blue square on a long day"]),
        (6, ["x"]),
    ]:
        feed = _feeds(scorer, batch, captions)
        (expected,) = session.run([output], feed)
        np.testing.assert_array_equal(bound(feed), expected)
    assert staging.pinned == dict.fromkeys(scorer.bundle.spec.input_names.values(), True)
    assert len(pinner.pinned) == 3 + len(pinner.unpinned)
    staging.close()
    assert len(pinner.unpinned) == len(pinner.pinned)


def test_a_cpu_scorer_runs_the_session_directly() -> None:
    """On the CPU provider the scorer keeps `session.run` (no binding, no staging copy)."""
    scorer = OnnxScorer(load_bundle(SHAPES_BUNDLE), providers=("cpu",))
    assert scorer._bound is None and scorer.engine_cache is None and scorer.engine_dir is None
    scores = scorer.score([Image.new("RGB", (96, 96))] * 2, ["a red circle", "a square"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_without_a_cuda_runtime_buffers_stay_pageable() -> None:
    """Where no CUDA runtime library loads, the pinner declines and staging still works."""

    def no_library(_: str) -> Any:
        raise OSError("not found")

    pinner = CudaHostPinner(load=no_library)
    assert pinner.pin(np.zeros(8, np.uint8)) is False
    staging = HostStaging(pinner)
    staged = staging.stage("x", np.arange(6, dtype=np.int64).reshape(2, 3))
    assert staged.tolist() == [[0, 1, 2], [3, 4, 5]] and staging.pinned == {"x": False}
