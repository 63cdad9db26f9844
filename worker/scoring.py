"""Score (image, caption) pairs with an ONNX Runtime session over a model bundle.

Execution providers are tried in the order TensorRT → CUDA → CPU, keeping
those the installed onnxruntime offers and the settings allow; `worker.providers`
chooses them and builds their options. On a GPU provider each model call goes
through an IO binding (`worker.iobinding`); on the CPU through `session.run`.

`OnnxScorer` also explains (`worker.explain.VariantScorer`): it scores caption variants
against the batch's flagged pictures, through the bundle's two graphs when it has them
(`worker.twograph`: each picture encoded once), else through model.onnx with each
picture's pixels repeated for its variants.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog
from PIL import Image

from worker.bundle import Bundle
from worker.config import (
    DEFAULT_EXPLAIN_VARIANTS,
    DEFAULT_TENSORRT,
    DEFAULT_TRT_CACHE_DIR,
    PROVIDERS,
    TensorRtTuning,
)
from worker.errors import BundleFieldError, ConfigError, WarmupFailed
from worker.iobinding import BoundRun, CudaHostPinner, HostStaging
from worker.preprocess import RESAMPLE, preprocess_images
from worker.providers import (
    DEVICE_OF,
    ORT_PROVIDERS,
    EngineKey,
    choose_providers,
    engine_cache_warm,
    provider_options,
)
from worker.twograph import TwoGraphs

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "itmguard needs ONNX Runtime to score posts: install "
        "'itmguard[cpu]' (onnxruntime) or, on NVIDIA GPUs, 'itmguard[gpu]' (onnxruntime-gpu)"
    ) from exc

__all__ = ["ORT_PROVIDERS", "OnnxScorer", "Scorer"]

log = structlog.get_logger(__name__)


class Scorer(Protocol):
    """Anything that turns (image, caption) pairs into match probabilities."""

    model_id: str
    threshold: float
    provider: str
    input_size: tuple[int, int] | None
    """The model's image input (width, height); pictures are decoded no larger than needed
    for it. None: decode at full size."""

    def fit(self, image: Image.Image) -> Image.Image:
        """`image` as the model's input takes it (resized, for a bundle): done where the
        pictures are decoded, so that the model's thread only normalises them."""
        ...

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        """Match probabilities in [0, 1], one per pair; NaN where the model failed."""
        ...


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
        providers: Sequence[str] = PROVIDERS,
        threshold: float | None = None,
        trt_cache_dir: Path = DEFAULT_TRT_CACHE_DIR,
        cpu_threads: int = 0,
        cpu_memory_arena: bool = True,
        require_provider: str | None = None,
        tensorrt: TensorRtTuning = DEFAULT_TENSORRT,
        engine_key: EngineKey | None = None,
        explain_variants: int = DEFAULT_EXPLAIN_VARIANTS,
    ) -> None:
        """Open `bundle` on the first usable provider.

        `cpu_threads` (0: ONNX Runtime's choice, a thread per core of the machine) and
        `cpu_memory_arena` exist for containers, where the machine's core count is not the
        CPU limit and resident memory is what the limit counts. `engine_key` names the
        TensorRT cache directory under `trt_cache_dir`; None probes this machine for it when
        TensorRT is among the providers. `explain_variants` caps the caption variants scored
        per flagged post (0: no explanations); with it above 0, a two-graph bundle's graphs
        are opened beside model.onnx.

        Raises:
            ConfigError: no allowed provider is available, or `require_provider` is not
                offered or could not be loaded.
            BundleFieldError: model.onnx's inputs or output differ from bundle.json.
        """
        self.bundle = bundle
        spec = bundle.spec
        self.model_id = spec.model_id
        self.threshold = spec.threshold if threshold is None else threshold
        names = choose_providers(
            providers, ort.get_available_providers(), required=require_provider
        )
        if engine_key is None and ORT_PROVIDERS["tensorrt"] in names:
            engine_key = EngineKey.probe(spec.model_sha256, ort.__version__)
        self.engine_dir = trt_cache_dir / engine_key.dirname if engine_key else None
        """Where this model's TensorRT engines and timing caches go, on this GPU and these
        releases; None without TensorRT."""
        cached = self.engine_dir is not None and engine_cache_warm(self.engine_dir)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.inter_op_num_threads = 1
        session_options.intra_op_num_threads = cpu_threads
        session_options.enable_cpu_mem_arena = cpu_memory_arena
        started = time.perf_counter()
        self._session = ort.InferenceSession(
            str(bundle.model_path),
            sess_options=session_options,
            providers=list(
                zip(names, provider_options(names, spec, self.engine_dir, tensorrt), strict=True)
            ),
        )
        self.open_seconds = time.perf_counter() - started
        """Time the session took to open: on TensorRT with explicit profiles, the engine build
        or its load from the cache."""
        self.provider: str = self._session.get_providers()[0]
        if require_provider is not None and self.provider != ORT_PROVIDERS[require_provider]:
            raise ConfigError(
                "ITMGUARD_REQUIRE_PROVIDER",
                require_provider,
                f"onnxruntime offers {ORT_PROVIDERS[require_provider]} but could not load it "
                f"and fell back to {self.provider}; its log above names the missing library",
            )
        self.engine_cache: str | None = None
        """For TensorRT, "warm" when its engine was in the cache before the session opened,
        else "cold" (built now); None on other providers."""
        if self.provider == ORT_PROVIDERS["tensorrt"]:
            self.engine_cache = "warm" if cached else "cold"
        self._check_signature()
        self.explain_variants = explain_variants
        split = bundle.split_paths
        self._graphs = (
            TwoGraphs(bundle, split, names, session_options)
            if split is not None and explain_variants > 0
            else None
        )
        self._text = bundle.text_encoder()
        self.input_size: tuple[int, int] | None = (spec.image.width, spec.image.height)
        device = DEVICE_OF[self.provider]
        self._bound = (
            BoundRun(
                self._session,
                spec.output_name,
                device=device,
                staging=HostStaging(CudaHostPinner()),
            )
            if device != "cpu"
            else None
        )
        log.info(
            "model_loaded",
            model_id=self.model_id,
            provider=self.provider,
            threshold=self.threshold,
            cpu_threads=cpu_threads,
            cpu_memory_arena=cpu_memory_arena,
            open_ms=round(self.open_seconds * 1000, 1),
            engine_cache=self.engine_cache,
            engine_dir=str(self.engine_dir) if self.engine_dir else None,
            explain_variants=explain_variants,
            explain_graphs="two" if self._graphs else "one",
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

    def fit(self, image: Image.Image) -> Image.Image:
        """`image` resized to the bundle's input as `preprocess_images` resizes it, which then
        finds nothing left to resize."""
        spec = self.bundle.spec.image
        return image.resize((spec.width, spec.height), resample=RESAMPLE[spec.resample])

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        """Match probabilities of the pairs: one call of model.onnx, or on the CPU, with a
        two-graph bundle that explains, its two graphs, keeping the pictures' encodings."""
        ids, mask = self._text.encode(captions)
        pixels = preprocess_images(images, self.bundle.spec.image)
        if self._graphs is not None and self._bound is None:
            return _probabilities(self._graphs.score_batch(images, pixels, ids, mask))
        return self.infer(pixels, ids, mask)

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
        pixels = preprocess_images([blank] * batch, spec.image)
        try:
            scores = self.infer(pixels, ids, np.ones_like(ids))
            if self._graphs is not None and self._bound is None:  # what `score` will call
                scores = self._graphs.score_batch([], pixels, ids, np.ones_like(ids))
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

    def _call(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's output for `feed`: through the IO binding on a GPU provider, else
        `session.run`."""
        if self._bound is not None:
            return self._bound(feed)
        (out,) = self._session.run([self.bundle.spec.output_name], dict(feed))
        return np.asarray(out)

    def infer(self, pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One model call on inputs already preprocessed and tokenised (benchmarks time the
        model alone with it); probabilities outside [0, 1] become NaN."""
        spec = self.bundle.spec
        feed = {
            spec.input_names["pixel_values"]: pixels,
            spec.input_names["input_ids"]: ids,
            spec.input_names["attention_mask"]: mask,
        }
        return _probabilities(np.asarray(self._call(feed), dtype=np.float64).reshape(len(ids)))

    def score_variants(
        self, images: Sequence[Image.Image], captions: Sequence[str], image_of: Sequence[int]
    ) -> np.ndarray:
        """Match probability of each `captions[i]` against `images[image_of[i]]`.

        With the two graphs, each picture is encoded once (or not at all, when the batch
        just scored on the CPU holds it) and the captions go to the text graph in one call;
        otherwise each caption goes to model.onnx beside its picture's pixels, in one call,
        or in calls of the TensorRT profile's largest batch.
        """
        spec = self.bundle.spec
        ids, mask = self._text.encode(captions)
        rows = np.asarray(image_of, dtype=np.int64)
        if self._graphs is not None:
            encoding = self._graphs.encodings_of(
                images, lambda missing: preprocess_images(missing, spec.image)
            )
            return _probabilities(self._graphs.score([e[rows] for e in encoding], ids, mask))
        pixels = preprocess_images(images, spec.image)
        step = len(rows)
        profile = spec.tensorrt_profile
        if self.provider == ORT_PROVIDERS["tensorrt"] and profile:
            step = profile["batch"][2]
        return np.concatenate(
            [
                self.infer(pixels[rows[i : i + step]], ids[i : i + step], mask[i : i + step])
                for i in range(0, len(rows), step)
            ]
        )


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """`scores` with every value outside [0, 1] made NaN: the model gave no probability."""
    return np.where((scores >= 0.0) & (scores <= 1.0), scores, np.nan)
