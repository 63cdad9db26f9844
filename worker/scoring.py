"""Score (image, caption) pairs with an ONNX Runtime session over a model bundle.

Execution providers are tried in the order TensorRT → CUDA → CPU, keeping
those the installed onnxruntime offers and the settings allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
from PIL import Image

from worker.bundle import Bundle
from worker.config import DEFAULT_TRT_CACHE_DIR
from worker.errors import BundleFieldError, ConfigError, WarmupFailed
from worker.preprocess import preprocess_images

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "itmguard needs ONNX Runtime to score posts: install "
        "'itmguard[cpu]' (onnxruntime) or, on NVIDIA GPUs, 'itmguard[gpu]' (onnxruntime-gpu)"
    ) from exc

__all__ = ["ORT_PROVIDERS", "OnnxScorer", "Scorer", "choose_providers", "tensorrt_options"]

log = structlog.get_logger(__name__)

ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class Scorer(Protocol):
    """Anything that turns (image, caption) pairs into match probabilities."""

    model_id: str
    threshold: float
    provider: str
    input_size: tuple[int, int] | None
    """The model's image input (width, height); pictures are decoded no larger than needed
    for it. None: decode at full size."""

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        """Match probabilities in [0, 1], one per pair; NaN where the model failed."""
        ...


def choose_providers(allowed: Sequence[str], available: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names to use, in preference order.

    Raises:
        ConfigError: none of `allowed` is offered by this onnxruntime build.
    """
    chosen = [ORT_PROVIDERS[name] for name in allowed if ORT_PROVIDERS[name] in available]
    if not chosen:
        raise ConfigError(
            "ITMGUARD_PROVIDERS",
            ",".join(allowed),
            f"none is available in this onnxruntime (it offers {', '.join(available)})",
        )
    return chosen


def tensorrt_options(bundle: Bundle, cache_dir: Path) -> dict[str, Any]:
    """TensorRT provider options from the bundle's `tensorrt` section.

    Engines and timing caches live under `cache_dir/<model hash>/`, so a restart
    reuses them and a new model never picks up an old model's engines.
    """
    spec = bundle.spec
    trt = spec.raw.get("tensorrt", {})
    root = cache_dir / spec.model_sha256[:16]
    engines = root / trt.get("engine_cache", "engines")
    timing = root / trt.get("timing_cache", "timing")
    engines.mkdir(parents=True, exist_ok=True)
    timing.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "trt_fp16_enable": bool(trt.get("fp16", False)),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
    }
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


class OnnxScorer:
    """The production scorer: bundle preprocessing plus one ONNX Runtime session.

    The session's CPU options are chosen, not left to ONNX Runtime's defaults:

    - graph optimisation level ORT_ENABLE_ALL (also the Python default, set here so that
      it is a decision): every rewrite ONNX Runtime has, including the extended fusions
      (among others, an int8 bundle's DynamicQuantizeLinear + MatMulInteger + scale chains
      become single DynamicQuantizeMatMul / MatMulIntegerToFloat kernels) and the CPU
      layout rewrites. A bundle is exported with portable fusions only, so the
      provider-specific ones are left to the session. The extended and layout rewrites
      touch only nodes assigned to providers that implement them; TensorRT takes its
      subgraphs before they run and fuses by itself.
    - sequential execution and one inter-op thread: a model call is one graph for one
      batch, its branches depend on each other, and the worker makes one call at a time,
      so a second pool of threads running branches in parallel would only contend with
      the intra-op threads for the same cores.
    - intra-op threads from `cpu_threads`, the threads each large op (MatMul, attention)
      is split across; 0 keeps ONNX Runtime's default of one per core of the machine.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        providers: Sequence[str] = ("tensorrt", "cuda", "cpu"),
        threshold: float | None = None,
        trt_cache_dir: Path = DEFAULT_TRT_CACHE_DIR,
        cpu_threads: int = 0,
        cpu_memory_arena: bool = True,
    ) -> None:
        """Open `bundle` on the first usable provider.

        `cpu_threads` (0: ONNX Runtime's choice, a thread per core of the machine) and
        `cpu_memory_arena` exist for containers, where the machine's core count is not the
        CPU limit and resident memory is what the limit counts.

        Raises:
            ConfigError: no allowed provider is available.
            BundleFieldError: model.onnx's inputs or output differ from bundle.json.
        """
        self.bundle = bundle
        self.model_id = bundle.spec.model_id
        self.threshold = bundle.spec.threshold if threshold is None else threshold
        names = choose_providers(providers, ort.get_available_providers())
        options = [
            tensorrt_options(bundle, trt_cache_dir) if n == ORT_PROVIDERS["tensorrt"] else {}
            for n in names
        ]
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.inter_op_num_threads = 1
        session_options.intra_op_num_threads = cpu_threads
        session_options.enable_cpu_mem_arena = cpu_memory_arena
        self._session = ort.InferenceSession(
            str(bundle.model_path),
            sess_options=session_options,
            providers=list(zip(names, options, strict=True)),
        )
        self.provider = self._session.get_providers()[0]
        self._check_signature()
        self._text = bundle.text_encoder()
        self.input_size: tuple[int, int] | None = (
            bundle.spec.image.width,
            bundle.spec.image.height,
        )
        log.info(
            "model_loaded",
            model_id=self.model_id,
            provider=self.provider,
            threshold=self.threshold,
            cpu_threads=cpu_threads,
            cpu_memory_arena=cpu_memory_arena,
        )

    def _check_signature(self) -> None:
        spec = self.bundle.spec
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        declared = set(spec.input_names.values())
        if inputs != declared or spec.output_name not in outputs:
            raise BundleFieldError(
                str(self.bundle.path),
                f"model.onnx has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                f"but bundle.json declares inputs {sorted(declared)} and output "
                f"{spec.output_name!r}",
            )

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        ids, mask = self._text.encode(captions)
        return self._run(preprocess_images(images, self.bundle.spec.image), ids, mask)

    def warm_up(self, batch: int, sequence: int) -> None:
        """Score `batch` blank pictures against captions of `sequence` tokens, so that the
        first real batch finds the session's memory allocated, its kernels chosen and, on
        TensorRT, its engine built.

        Raises:
            WarmupFailed: the model raised, or gave no probability for some pair.
        """
        spec = self.bundle.spec
        blank = Image.new("RGB", (spec.image.width, spec.image.height))
        ids = np.full((batch, sequence), spec.text.pad_id, dtype=np.int64)
        try:
            scores = self._run(
                preprocess_images([blank] * batch, spec.image), ids, np.ones_like(ids)
            )
        except Exception as exc:  # ONNX Runtime's errors share no base class
            reason = ": ".join([type(exc).__name__, *str(exc).strip().splitlines()[:1]])
            raise WarmupFailed(
                str(self.bundle.path), batch=batch, sequence=sequence, reason=reason
            ) from exc
        if np.isnan(scores).any():
            raise WarmupFailed(
                str(self.bundle.path),
                batch=batch,
                sequence=sequence,
                reason="the model gave no probability in [0, 1] for some pairs",
            )

    def _run(self, pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One model call; probabilities outside [0, 1] become NaN."""
        spec = self.bundle.spec
        feed = {
            spec.input_names["pixel_values"]: pixels,
            spec.input_names["input_ids"]: ids,
            spec.input_names["attention_mask"]: mask,
        }
        (out,) = self._session.run([spec.output_name], feed)
        scores = np.asarray(out, dtype=np.float64).reshape(len(ids))
        return np.where((scores >= 0.0) & (scores <= 1.0), scores, np.nan)
