"""What every exporter shares: the bundle contract's names, the manifest's common
fields, the tokenizer file, the ONNX trace, the parity gate, and writing a bundle
all at once.

An exporter (`export.blip`, `export.starter`) wraps its model as one
`torch.nn.Module` taking `pixel_values`, `input_ids` and `attention_mask` and
returning one match probability per pair; everything after that is here, so
every bundle is traced, checked against PyTorch and written the same way.
"""

from __future__ import annotations

import importlib.metadata
import resource
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer

from export.parity import PARITY_BATCHES, Feeds, batch_scores, compare, session_scores
from worker.bundle import BundleSpec
from worker.errors import ExportError
from worker.preprocess import TextEncoder, TextSpec

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "ParityGate",
    "bundle_manifest",
    "done_line",
    "draft_spec",
    "export_onnx",
    "staged_bundle",
    "torch_runner",
    "trace_with_reference",
    "write_tokenizer",
]

INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
OUTPUT_NAME = "match_probability"

_NO_HASH = "0" * 64
_KEPT_GRAPHS = ("model.onnx", "image.onnx", "text.onnx")


def bundle_manifest(
    *,
    name: str,
    version: str,
    architecture: str,
    image: dict[str, Any],
    text: dict[str, Any],
    threshold: float,
    calibration: dict[str, Any],
    opset: int,
    fp16: bool,
    max_batch: int,
    exporter: dict[str, str],
) -> dict[str, Any]:
    """bundle.json without its model hash: the fields every bundle has, in one shape.

    Args:
        image: the `image` object (height, width, resize, crop, resample, rescale, mean, std).
        text: the `text` object (max_tokens, pad_token, pad_id).
        calibration: how `threshold` and the output's scale were chosen; `method` at least.
        exporter: library versions to record next to the tool and the opset.
    """
    sequence = {"dtype": "int64", "shape": ["batch", "sequence"]}
    max_tokens = int(text["max_tokens"])
    return {
        "format_version": 1,
        "name": name,
        "version": version,
        "architecture": architecture,
        "inputs": {
            "pixel_values": {
                "name": "pixel_values",
                "dtype": "float32",
                "shape": ["batch", 3, image["height"], image["width"]],
            },
            "input_ids": {"name": "input_ids", **sequence},
            "attention_mask": {"name": "attention_mask", **sequence},
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch"],
            "meaning": "match_probability",
        },
        "image": image,
        "text": text,
        "threshold": threshold,
        "calibration": calibration,
        "tensorrt": {
            "fp16": fp16,
            "profile": {
                "batch": [1, min(8, max_batch), max_batch],
                "sequence": [1, min(32, max_tokens), max_tokens],
            },
            "engine_cache": "engines",
            "timing_cache": "timing",
        },
        "exporter": {
            "tool": f"itmguard {importlib.metadata.version('itmguard')}",
            "torch": torch.__version__,
            **exporter,
            "onnx_opset": opset,
        },
    }


def draft_spec(manifest: dict[str, Any], out: Path) -> BundleSpec:
    """`manifest` checked against the bundle schema before there is a model to hash, so a
    bad name, version or threshold fails before the slow steps rather than after them."""
    return BundleSpec.from_manifest({**manifest, "model_sha256": _NO_HASH}, str(out))


def write_tokenizer(tokenizer: Tokenizer, work: Path, text: TextSpec) -> TextEncoder:
    """Write the bundle's tokenizer.json, and an encoder read back from that file.

    Every caption the export encodes (calibration, parity) goes through the file the
    worker will load, not through the exporter's own tokenizer object and its settings.
    """
    path = work / "tokenizer.json"
    tokenizer.save(str(path))
    return TextEncoder.from_file(path, text)


def export_onnx(
    shown: str, wrapper: torch.nn.Module, path: Path, example: Feeds, opset: int
) -> None:
    """Trace `wrapper` to `path` with dynamic batch and sequence axes, and check the file.

    Trace on a real batch whose captions differ in length, so padding is in the graph.

    Raises:
        ExportError: tracing fails or the ONNX checker refuses the graph.
    """
    sequence_axes = {0: "batch", 1: "sequence"}
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer's generic cautions (Python booleans from tensors, Slice steps it
            # cannot fold) say nothing the parity gate after the export does not check on
            # real batches; shown, they bury the progress lines.
            # TracerWarning is public in torch.jit but missing from its __all__.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            torch.onnx.export(
                wrapper,
                tuple(torch.from_numpy(example[role]) for role in INPUT_NAMES),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    "pixel_values": {0: "batch"},
                    "input_ids": sequence_axes,
                    "attention_mask": sequence_axes,
                    OUTPUT_NAME: {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(shown, f"ONNX export failed: {exc}") from exc


def trace_with_reference(
    shown: str,
    wrapper: torch.nn.Module,
    feeds: list[Feeds],
    path: Path,
    opset: int,
    progress: Callable[[str], None],
) -> np.ndarray:
    """The trace stage: `wrapper` traced to `path`, and its PyTorch scores on the parity set
    `feeds`, the reference every graph of the bundle is then checked against.

    Traced on the parity set's second batch, whose two captions differ in length.
    """
    progress(f"trace: opset {opset}, dynamic batch and sequence axes")
    export_onnx(shown, wrapper, path, feeds[1], opset)
    return batch_scores(torch_runner(wrapper), feeds)


def torch_runner(wrapper: torch.nn.Module) -> Callable[[Feeds], np.ndarray]:
    """`wrapper` as a function from one batch of feeds to its match probabilities."""

    def run(feeds: Feeds) -> np.ndarray:
        with torch.inference_mode():
            probabilities = wrapper(*(torch.from_numpy(feeds[role]) for role in INPUT_NAMES))
        return np.asarray(probabilities.numpy())

    return run


class ParityGate:
    """Scores candidate graphs on the parity set and refuses those off the reference."""

    def __init__(
        self,
        shown: str,
        spec: BundleSpec,
        feeds: list[Feeds],
        reference: np.ndarray,
        tolerance: float,
        progress: Callable[[str], None],
    ) -> None:
        self.shown, self.spec, self.feeds = shown, spec, feeds
        self.reference, self.tolerance, self.progress = reference, tolerance, progress
        self.scores: dict[Path, np.ndarray] = {}

    def _score(self, path: Path) -> np.ndarray:
        if path not in self.scores:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.scores[path] = session_scores(session, self.spec, self.feeds)
        return self.scores[path]

    def check(self, stage: str, path: Path) -> dict[str, Any]:
        """Parity of the graph at `path` with PyTorch, as bundle.json records it.

        Raises:
            ExportError: some pair differs by more than the tolerance (or is NaN).
        """
        return self.check_scores(stage, self._score(path))

    def check_scores(self, stage: str, scores: np.ndarray) -> dict[str, Any]:
        """Parity with PyTorch of scores a candidate gave on the parity set (`check`, for a
        candidate that is not one graph: the two-graph form's composition).

        Raises:
            ExportError: some pair differs by more than the tolerance (or is NaN).
        """
        parity = compare(
            self.reference, scores, tolerance=self.tolerance, threshold=self.spec.threshold
        )
        self.progress(
            f"{stage}: {parity.n_pairs} pairs in batches of {', '.join(map(str, PARITY_BATCHES))}: "
            f"max abs diff {parity.max_abs_diff:.3g}, mean {parity.mean_abs_diff:.3g} "
            f"(tolerance {self.tolerance:g}), verdicts agree on {parity.decision_agreement:.1%}"
        )
        if not parity.ok:
            raise ExportError(
                self.shown,
                f"ONNX Runtime differs from PyTorch by up to {parity.max_abs_diff:.3g} in match "
                f"probability over {parity.n_pairs} pairs after {stage} "
                f"(tolerance {self.tolerance:g})",
            )
        return parity.as_manifest()

    def check_fp16(self, fp32: Path, fp16: Path, *, min_agreement: float) -> dict[str, Any]:
        """Verdict agreement of an fp16 graph with its fp32 graph; see `check_agreement`."""
        return self.check_agreement("fp16", fp32, fp16, min_agreement=min_agreement)

    def check_agreement(
        self, precision: str, fp32: Path, candidate: Path, *, min_agreement: float
    ) -> dict[str, Any]:
        """Verdict agreement of a reduced-precision graph (`precision`: fp16, int8) with its
        fp32 graph and with PyTorch, as bundle.json records it under `<precision>_vs_fp32`,
        `<precision>_vs_pytorch` and `<precision>_min_agreement`.

        Raises:
            ExportError: the candidate agrees with fp32 on fewer than `min_agreement`
                of the parity set's verdicts.
        """
        reduced = self._score(candidate)
        threshold = self.spec.threshold
        versus_fp32 = compare(self._score(fp32), reduced, tolerance=None, threshold=threshold)
        versus_torch = compare(self.reference, reduced, tolerance=None, threshold=threshold)
        self.progress(
            f"{precision}: verdicts agree with fp32 on {versus_fp32.decision_agreement:.1%} of "
            f"{versus_fp32.n_pairs} pairs (need {min_agreement:.1%}); max abs diff "
            f"{versus_fp32.max_abs_diff:.3g} from fp32, "
            f"{versus_torch.max_abs_diff:.3g} from PyTorch"
        )
        if not versus_fp32.decision_agreement >= min_agreement:
            raise ExportError(
                self.shown,
                f"the {precision} graph agrees with fp32 on "
                f"{versus_fp32.decision_agreement:.1%} of verdicts, below {min_agreement:.1%}; "
                "export in fp32",
            )
        return {
            f"{precision}_vs_fp32": versus_fp32.as_manifest(),
            f"{precision}_vs_pytorch": versus_torch.as_manifest(),
            f"{precision}_min_agreement": min_agreement,
        }


@contextmanager
def staged_bundle(out: Path, shown: str) -> Iterator[Path]:
    """A temporary directory next to `out` that becomes `out` only if the block succeeds.

    The block writes the bundle files into the directory it is given; on a clean
    exit every `*.onnx` other than `model.onnx` and the two-graph form's
    `image.onnx` and `text.onnx` is removed and the directory is renamed to `out`.
    On any error the directory is removed, so a failed export leaves nothing behind.

    Raises:
        ExportError: `out` exists already (checked before anything is written).
    """
    if out.exists():
        raise ExportError(shown, f"{out} already exists; choose a new bundle directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield work
        for leftover in work.glob("*.onnx"):
            if leftover.name not in _KEPT_GRAPHS:
                leftover.unlink()
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already once renamed


def done_line(spec: BundleSpec, started: float) -> str:
    """An export's last progress line: the model id, wall time since `started` (a
    time.monotonic() reading) and this process's peak resident memory."""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.monotonic() - started
    return f"done: {spec.model_id} in {elapsed:.1f}s, peak memory {peak_mib:.0f} MiB"
