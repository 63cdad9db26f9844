"""Export a Hugging Face BLIP image-text-matching checkpoint to an itmguard model bundle.

The bundle's preprocessing figures are read from the checkpoint's own
processor, its inputs are built by the worker's own preprocessing
(`worker.preprocess`), and the exported graph is checked against PyTorch on
those inputs before the bundle appears: a bundle either scores as its
checkpoint does, or is not written at all.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from PIL import Image
from transformers import AutoProcessor, BlipForImageTextRetrieval

from export.parity import Reference, measure_parity, sample_pairs
from worker.bundle import BundleSpec, write_manifest
from worker.errors import ExportError
from worker.preprocess import TextEncoder, preprocess_images

__all__ = ["ARCHITECTURE", "INPUT_NAMES", "OUTPUT_NAME", "MatchProbability", "export_blip"]

ARCHITECTURE = "BlipForImageTextRetrieval"
INPUT_NAMES = ("pixel_values", "input_ids", "attention_mask")
OUTPUT_NAME = "match_probability"

# A placeholder hash lets the manifest be checked before the slow steps.
_NO_HASH = "0" * 64


class MatchProbability(torch.nn.Module):
    """BLIP's ITM head as one probability per pair: softmax(itm_score)[:, 1]."""

    def __init__(self, model: BlipForImageTextRetrieval) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Probability that each image matches its caption, float32 of shape (batch,)."""
        output = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            use_itm_head=True,
        )
        return torch.softmax(output.itm_score, dim=-1)[:, 1]


def export_blip(
    checkpoint: Path,
    out: Path,
    *,
    name: str | None = None,
    version: str = "1",
    threshold: float = 0.5,
    max_text_tokens: int | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
    progress: Callable[[str], None] = print,
) -> BundleSpec:
    """Write the bundle directory `out` from the checkpoint directory `checkpoint`.

    The bundle is assembled in a temporary directory next to `out` and renamed
    into place only after the parity check passes, so a failed export leaves
    nothing behind.

    Args:
        checkpoint: a local `BlipForImageTextRetrieval` checkpoint with its processor.
        out: the bundle directory to create; it must not exist yet.
        name: bundle name; defaults to the checkpoint directory's name.
        version: bundle version; verdicts record `name@version`.
        threshold: match probability below which a post is flagged.
        max_text_tokens: caption token limit; defaults to what the tokenizer and
            the text position embeddings both allow.
        opset: ONNX opset to export with.
        tolerance: largest absolute difference in match probability allowed
            between PyTorch and ONNX Runtime on the parity samples.
        progress: called with one line per stage (load, export, verify, write).

    Returns:
        The checked manifest written to `out/bundle.json`.

    Raises:
        ExportError: the checkpoint is missing, is not a BLIP ITM checkpoint, has a
            processor the worker cannot reproduce, fails to export, or fails parity.
        BundleFieldError: `name`, `version` or `threshold` break the bundle schema.
    """
    checkpoint = Path(checkpoint)
    out = Path(out)
    shown = str(checkpoint)
    _check_checkpoint(checkpoint)
    if out.exists():
        raise ExportError(shown, f"{out} already exists; choose a new bundle directory")

    progress(f"load: {checkpoint}")
    model, processor = _load(checkpoint)
    manifest = _manifest(
        shown,
        model,
        processor,
        name=name if name is not None else checkpoint.resolve().name,
        version=version,
        threshold=threshold,
        max_text_tokens=max_text_tokens,
        opset=opset,
    )
    spec = BundleSpec.from_manifest({**manifest, "model_sha256": _NO_HASH}, str(out))

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        processor.tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
        encoder = TextEncoder.from_file(work / "tokenizer.json", spec.text)
        wrapper = MatchProbability(model).eval()

        progress(f"export: model.onnx, opset {opset}")
        _export_onnx(shown, wrapper, work / "model.onnx", spec, encoder, opset)

        session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
        parity = measure_parity(_reference(wrapper), session, spec, encoder, tolerance=tolerance)
        progress(
            f"verify: {parity.n_pairs} pairs, max abs diff {parity.max_abs_diff:.3g}, "
            f"mean {parity.mean_abs_diff:.3g} (tolerance {tolerance:g})"
        )
        if not parity.ok:
            raise ExportError(
                shown,
                f"ONNX Runtime differs from PyTorch by up to {parity.max_abs_diff:.3g} in match "
                f"probability over {parity.n_pairs} pairs (tolerance {tolerance:g})",
            )

        progress(f"write: {out}")
        spec = write_manifest(work, {**manifest, "parity": parity.as_manifest()})
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # gone already once renamed
    return spec


def _check_checkpoint(checkpoint: Path) -> None:
    shown = str(checkpoint)
    if not checkpoint.is_dir():
        raise ExportError(shown, "no such checkpoint directory")
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(shown, "no config.json; not a Hugging Face checkpoint") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(shown, f"config.json is not JSON ({exc})") from None
    if not isinstance(config, dict):
        config = {}
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != "blip" or ARCHITECTURE not in architectures:
        raise ExportError(
            shown,
            f"not a BLIP image-text-matching checkpoint: model_type {model_type!r}, "
            f"architectures {architectures}; export needs {ARCHITECTURE}",
        )


def _load(checkpoint: Path) -> tuple[BlipForImageTextRetrieval, Any]:
    shown = str(checkpoint)
    try:
        model, info = cast(
            tuple[BlipForImageTextRetrieval, dict[str, Any]],
            BlipForImageTextRetrieval.from_pretrained(checkpoint, output_loading_info=True),
        )
        processor = AutoProcessor.from_pretrained(checkpoint)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as exc:
        raise ExportError(shown, f"transformers cannot load it: {exc}") from exc
    if info["missing_keys"]:
        # from_pretrained would fill these with random weights and score noise.
        missing = sorted(info["missing_keys"])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ExportError(shown, f"weights missing for {', '.join(missing[:5])}{more}")
    if getattr(processor, "image_processor", None) is None or not hasattr(
        getattr(processor, "tokenizer", None), "backend_tokenizer"
    ):
        raise ExportError(
            shown, "needs a processor with an image processor and a fast (tokenizers) tokenizer"
        )
    return model, processor


def _manifest(
    shown: str,
    model: BlipForImageTextRetrieval,
    processor: Any,
    *,
    name: str,
    version: str,
    threshold: float,
    max_text_tokens: int | None,
    opset: int,
) -> dict[str, Any]:
    image = _image_fields(shown, processor.image_processor)
    tokenizer = processor.tokenizer
    text_config: Any = model.config.text_config
    max_positions = int(text_config.max_position_embeddings)
    if max_text_tokens is None:
        max_text_tokens = min(int(tokenizer.model_max_length), max_positions)
    elif max_text_tokens > max_positions:
        raise ExportError(
            shown,
            f"max_text_tokens={max_text_tokens} exceeds the model's {max_positions} positions",
        )
    if tokenizer.pad_token is None or tokenizer.pad_token_id is None:
        raise ExportError(shown, "the tokenizer has no padding token")
    sequence = {"dtype": "int64", "shape": ["batch", "sequence"]}
    return {
        "format_version": 1,
        "name": name,
        "version": version,
        "architecture": ARCHITECTURE,
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
        "text": {
            "max_tokens": max_text_tokens,
            "pad_token": tokenizer.pad_token,
            "pad_id": int(tokenizer.pad_token_id),
        },
        "threshold": threshold,
        "calibration": {"method": "none"},
        "exporter": {
            "tool": f"itmguard {importlib.metadata.version('itmguard')}",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx_opset": opset,
        },
    }


def _image_fields(shown: str, image_processor: Any) -> dict[str, Any]:
    """bundle.json's `image` object, refusing what `preprocess_images` cannot reproduce."""
    size = dict(image_processor.size)
    if (
        not image_processor.do_resize
        or set(size) != {"height", "width"}
        or getattr(image_processor, "do_center_crop", False)
    ):
        raise ExportError(
            shown,
            f"the image processor resizes to {size} (crop: "
            f"{getattr(image_processor, 'do_center_crop', False)}); the worker only resizes "
            "to an exact height and width, without cropping",
        )
    normalize = image_processor.do_normalize

    def rgb(values: Any, default: float) -> list[float]:
        return [float(v) for v in np.broadcast_to(values if normalize else default, 3)]

    return {
        "height": int(size["height"]),
        "width": int(size["width"]),
        "resize": "exact",
        "crop": None,
        "resample": Image.Resampling(int(image_processor.resample)).name.lower(),
        "rescale_factor": float(image_processor.rescale_factor)
        if image_processor.do_rescale
        else 1.0,
        "mean": rgb(image_processor.image_mean, 0.0),
        "std": rgb(image_processor.image_std, 1.0),
    }


def _export_onnx(
    shown: str,
    wrapper: MatchProbability,
    path: Path,
    spec: BundleSpec,
    encoder: TextEncoder,
    opset: int,
) -> None:
    # Traced on two real pairs; batch and sequence stay dynamic in the graph.
    images, captions = sample_pairs()
    input_ids, attention_mask = encoder.encode(captions[:2])
    example = (
        torch.from_numpy(preprocess_images(images[:2], spec.image)),
        torch.from_numpy(input_ids),
        torch.from_numpy(attention_mask),
    )
    sequence_axes = {0: "batch", 1: "sequence"}
    try:
        with torch.inference_mode():
            torch.onnx.export(
                wrapper,
                example,
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


def _reference(wrapper: MatchProbability) -> Reference:
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            probabilities = wrapper(*(torch.from_numpy(feeds[role]) for role in INPUT_NAMES))
        return np.asarray(probabilities.numpy())

    return run
