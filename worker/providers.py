"""ONNX Runtime execution providers: which ones a session gets, and the options of each.

Every provider decision lives here, so that the scorer, the benchmarks and the tests build the
same lists: TensorRT first (fp16, engine and timing caches, the bundle's shape profiles,
workspace and builder optimisation level), then CUDA (cuDNN's exhaustive convolution search,
an arena that grows by what a batch needs), then the CPU, which ONNX Runtime always keeps for
the nodes no other provider takes.

TensorRT engines are built for one GPU model and compute capability by one TensorRT release
and loaded through one ONNX Runtime release; an engine built under any other combination is
stale. Engines and timing caches therefore live under a directory named by all of these and the
model's hash (`EngineKey`), so a node pool of another GPU type or an upgraded image builds its
own engine instead of loading a stale one.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog

from worker.bundle import BundleSpec
from worker.config import TensorRtTuning
from worker.errors import ConfigError

__all__ = [
    "DEVICE_OF",
    "ORT_PROVIDERS",
    "EngineKey",
    "choose_providers",
    "cuda_options",
    "engine_cache_warm",
    "probe_gpu",
    "provider_options",
    "tensorrt_options",
    "tensorrt_version",
]

ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

DEVICE_OF = {
    "TensorrtExecutionProvider": "cuda",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}
"""Where each provider wants a model call's inputs: the device IO binding copies them to."""

log = structlog.get_logger(__name__)

_TENSORRT_PACKAGES = ("tensorrt-cu12-libs", "tensorrt-cu13-libs", "tensorrt-libs", "tensorrt")
_NVINFER_SONAMES = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so")
_NVIDIA_SMI_TIMEOUT_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9.]+")


@dataclass(frozen=True)
class EngineKey:
    """Everything that makes a TensorRT engine unportable, as one directory name."""

    model_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt: str
    onnxruntime: str

    @property
    def dirname(self) -> str:
        """A filesystem-safe name: letters, digits, '.' and '-' only."""
        parts = (
            ("", self.model_sha256[:16]),
            ("", self.gpu_name),
            ("sm", self.compute_capability.replace(".", "")),
            ("trt", self.tensorrt),
            ("ort", self.onnxruntime),
        )
        return "-".join(
            prefix + (_UNSAFE.sub("-", value).strip("-.") or "unknown") for prefix, value in parts
        )

    @classmethod
    def probe(
        cls,
        model_sha256: str,
        onnxruntime: str,
        *,
        gpu: Callable[[], tuple[str, str]] | None = None,
        tensorrt: Callable[[], str] | None = None,
    ) -> EngineKey:
        """The key on this machine: the GPU from `nvidia-smi`, the TensorRT release from its
        package or library. `gpu` and `tensorrt` replace those probes in tests."""
        name, capability = (gpu or probe_gpu)()
        if "unknown" in (name, capability):
            log.warning("gpu_unknown", reason="nvidia-smi gave no GPU name and capability")
        return cls(model_sha256, name, capability, (tensorrt or tensorrt_version)(), onnxruntime)


def choose_providers(
    allowed: Sequence[str], available: Sequence[str], *, required: str | None = None
) -> list[str]:
    """ONNX Runtime provider names to use, in preference order.

    `required` (ITMGUARD_REQUIRE_PROVIDER) goes first and must be offered; the allowed
    providers after it in `allowed` stay behind it for the nodes it cannot run.

    Raises:
        ConfigError: `required` is not offered by this onnxruntime build, or none of `allowed`
            is.
    """
    if required is not None:
        if ORT_PROVIDERS[required] not in available:
            raise ConfigError(
                "ITMGUARD_REQUIRE_PROVIDER",
                required,
                f"this onnxruntime has no {ORT_PROVIDERS[required]} (it offers "
                f"{', '.join(available)}); install the 'gpu' extra (onnxruntime-gpu) with the "
                "CUDA, cuDNN and TensorRT libraries, see docs/gpu-setup.md",
            )
        rest = list(allowed)[list(allowed).index(required) + 1 :] if required in allowed else []
        allowed = [required, *rest]
    chosen = [ORT_PROVIDERS[name] for name in allowed if ORT_PROVIDERS[name] in available]
    if not chosen:
        raise ConfigError(
            "ITMGUARD_PROVIDERS",
            ",".join(allowed),
            f"none is available in this onnxruntime (it offers {', '.join(available)})",
        )
    return chosen


def cuda_options(device_id: int = 0) -> dict[str, Any]:
    """CUDA provider options.

    cuDNN's exhaustive algorithm search runs once per input shape and keeps the fastest
    convolution (BLIP's patch embedding), worth its first-call cost in a long-running worker.
    The arena grows by what a batch asks for, not to the next power of two, so a GPU shared
    with other pods holds what the worker uses rather than up to twice that.
    """
    return {
        "device_id": device_id,
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": True,
    }


def tensorrt_options(
    spec: BundleSpec, engine_dir: Path, tuning: TensorRtTuning, device_id: int = 0
) -> dict[str, Any]:
    """TensorRT provider options from the bundle's `tensorrt` section and the settings.

    Engines go to `engine_dir/engines`, timing caches to `engine_dir/timing`; `engine_dir` is
    `EngineKey.dirname` under the cache directory. The shape profiles are the bundle's, so the
    engine is built once for every batch and caption length the worker sends.
    """
    trt = spec.raw.get("tensorrt", {})
    engines = engine_dir / trt.get("engine_cache", "engines")
    timing = engine_dir / trt.get("timing_cache", "timing")
    engines.mkdir(parents=True, exist_ok=True)
    timing.mkdir(parents=True, exist_ok=True)
    fp16 = bool(trt.get("fp16", False)) if tuning.fp16 is None else tuning.fp16
    options: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
        "trt_builder_optimization_level": tuning.builder_level,
    }
    if tuning.workspace_mb:
        options["trt_max_workspace_size"] = tuning.workspace_mb * 2**20
    profile = spec.tensorrt_profile
    if profile is not None:
        names, image = spec.input_names, spec.image

        def shapes(batch: int, sequence: int) -> str:
            return (
                f"{names['pixel_values']}:{batch}x3x{image.height}x{image.width},"
                f"{names['input_ids']}:{batch}x{sequence},"
                f"{names['attention_mask']}:{batch}x{sequence}"
            )

        for i, level in enumerate(("min", "opt", "max")):
            options[f"trt_profile_{level}_shapes"] = shapes(
                profile["batch"][i], profile["sequence"][i]
            )
    return options


def provider_options(
    names: Sequence[str], spec: BundleSpec, engine_dir: Path | None, tuning: TensorRtTuning
) -> list[dict[str, Any]]:
    """Options for each provider of `names` (ONNX Runtime's names), in the same order.

    Raises:
        ValueError: TensorRT is among `names` but no `engine_dir` is given.
    """

    def trt() -> dict[str, Any]:
        if engine_dir is None:
            raise ValueError("TensorRT needs an engine cache directory")
        return tensorrt_options(spec, engine_dir, tuning)

    built: dict[str, Callable[[], dict[str, Any]]] = {
        ORT_PROVIDERS["tensorrt"]: trt,
        ORT_PROVIDERS["cuda"]: cuda_options,
        ORT_PROVIDERS["cpu"]: dict,
    }
    return [built[name]() for name in names]


def engine_cache_warm(engine_dir: Path) -> bool:
    """Whether `engine_dir` already holds a TensorRT engine: the session will load it instead
    of building one."""
    return any(engine_dir.rglob("*.engine"))


def probe_gpu(
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run, device_id: int = 0
) -> tuple[str, str]:
    """The GPU's model name and compute capability from `nvidia-smi`, which every NVIDIA driver
    installs; ("unknown", "unknown") where it cannot tell."""
    try:
        done = run(
            [
                "nvidia-smi",
                f"--id={device_id}",
                "--query-gpu=name,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", "unknown"
    name, _, capability = done.stdout.strip().partition(",")
    if done.returncode != 0 or not name.strip() or not capability.strip():
        return "unknown", "unknown"
    return name.strip(), capability.strip()


def tensorrt_version(
    version: Callable[[str], str] = metadata.version,
    load: Callable[[str], Any] = ctypes.CDLL,
) -> str:
    """The TensorRT release ONNX Runtime will load: from the TensorRT wheel's metadata, or
    else from libnvinfer itself; "unknown" where neither is found."""
    for package in _TENSORRT_PACKAGES:
        try:
            return version(package)
        except metadata.PackageNotFoundError:
            continue
    for soname in _NVINFER_SONAMES:
        try:
            packed = int(load(soname).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        major, rest = divmod(packed, 10_000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return "unknown"
