"""Export a Hugging Face BLIP image-text-matching checkpoint to an itmguard model bundle.

The bundle's preprocessing figures are read from the checkpoint's own
processor, its inputs are built by the worker's own preprocessing
(`worker.preprocess`), and the exported graph is checked against PyTorch on
those inputs before the bundle appears: a bundle either scores as its
checkpoint does, or is not written at all.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import transformers
from onnxruntime.transformers.onnx_model import OnnxModel
from onnxruntime.transformers.optimizer import optimize_model
from PIL import Image
from transformers import AutoProcessor, BlipForImageTextRetrieval

from export.blip_checkpoint import (
    ARCHITECTURE,
    check_checkpoint,
    default_name,
    resolve_checkpoint,
)
from export.blip_graphs import ENCODING, MatchProbability, trace_blip_split
from export.bundling import (
    INPUT_NAMES,
    OUTPUT_NAME,
    ParityGate,
    bundle_manifest,
    done_line,
    draft_spec,
    staged_bundle,
    trace_with_reference,
    write_tokenizer,
)
from export.parity import parity_feeds
from export.quantise import choose_precision, quantise_int8
from export.split import check_split
from worker.bundle import BundleSpec, write_manifest
from worker.errors import ExportError

__all__ = [
    "ARCHITECTURE",
    "FP16_MIN_AGREEMENT",
    "FP32_OPS",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "MatchProbability",
    "export_blip",
    "resolve_checkpoint",
]

FP32_OPS = ("LayerNormalization", "SkipLayerNormalization", "Softmax")
"""Ops an fp16 bundle keeps in fp32: fp16 LayerNorm and Softmax overflow on ViT/BERT."""

FP16_MIN_AGREEMENT = 0.995
"""Share of parity-set verdicts an fp16 graph must give as its fp32 graph does."""


def export_blip(
    checkpoint: Path | str,
    out: Path,
    *,
    name: str | None = None,
    version: str = "1",
    threshold: float = 0.5,
    max_text_tokens: int | None = None,
    opset: int = 17,
    tolerance: float = 1e-4,
    optimize: bool = True,
    fp16: bool = False,
    int8: bool = False,
    max_batch: int = 32,
    split: bool = True,
    progress: Callable[[str], None] = print,
) -> BundleSpec:
    """Write the bundle directory `out` from a BLIP ITM checkpoint.

    The bundle is assembled in a temporary directory next to `out` and renamed
    into place only after every check passes, so a failed export leaves
    nothing behind. The PyTorch model is dropped as soon as its reference
    scores are taken, so it and an ONNX Runtime session never share memory.

    Args:
        checkpoint: a local `BlipForImageTextRetrieval` checkpoint directory with its
            processor, or a Hugging Face hub id (`Salesforce/blip-itm-base-coco`) where
            the hub can be reached.
        out: the bundle directory to create; it must not exist yet.
        name: bundle name; defaults to the checkpoint's name.
        version: bundle version; verdicts record `name@version`.
        threshold: match probability below which a post is flagged.
        max_text_tokens: caption token limit; defaults to what the tokenizer and
            the text position embeddings both allow.
        opset: ONNX opset to export with.
        tolerance: largest absolute difference in match probability allowed
            between PyTorch and ONNX Runtime (fp32 and optimised graphs) on the parity set.
        optimize: apply ONNX Runtime's transformer fusions (LayerNorm, GELU, attention
            where the pattern matches), checked by the same parity gate.
        fp16: store the weights and most arithmetic in fp16, keeping LayerNorm, Softmax
            and the ITM head in fp32; fails unless verdicts agree with fp32 on at least
            `FP16_MIN_AGREEMENT` of the parity set.
        int8: for CPUs, dynamic int8 quantisation of the linear layers, ITM head kept in
            fp32 (`export.quantise`), gated as fp16 is; fp16 and int8 exclude each other.
        max_batch: largest batch in the TensorRT shape profile.
        split: also write the two-graph form, fp32 (`export.blip_graphs`), so that
            explanations encode each picture once.
        progress: called with one line per stage (load, trace, split, verify, optimise,
            fp16 or int8, write).

    Returns:
        The checked manifest written to `out/bundle.json`.

    Raises:
        ExportError: the checkpoint is missing or unreachable, is not a BLIP ITM
            checkpoint, has a processor the worker cannot reproduce, fails to export,
            or fails a parity gate; or fp16 and int8 are both asked for.
        BundleFieldError: `name`, `version` or `threshold` break the bundle schema.
    """
    out = Path(out)
    shown = str(checkpoint)
    if out.exists():
        raise ExportError(shown, f"{out} already exists; choose a new bundle directory")
    precision = choose_precision(shown, fp16=fp16, int8=int8)
    local = resolve_checkpoint(checkpoint, progress)
    check_checkpoint(local, shown)

    started = time.monotonic()
    progress(f"load: {local}")
    model, processor = _load(local, shown)
    manifest = _manifest(
        shown,
        model,
        processor,
        name=name if name is not None else default_name(checkpoint),
        version=version,
        threshold=threshold,
        max_text_tokens=max_text_tokens,
        opset=opset,
        fp16=fp16,
        max_batch=max_batch,
    )
    spec = draft_spec(manifest, out)

    with staged_bundle(out, shown) as work:
        encoder = write_tokenizer(processor.tokenizer.backend_tokenizer, work, spec.text)
        feeds = parity_feeds(spec, encoder)
        reference = trace_with_reference(
            shown, MatchProbability(model).eval(), feeds, work / "traced.onnx", opset, progress
        )
        if split:
            trace_blip_split(shown, model, feeds[1], work, opset, progress)
        text = model.text_encoder.config
        attention = (text.num_attention_heads, text.hidden_size)
        del model  # before any ONNX Runtime session opens, so the two never share memory
        gc.collect()
        gate = ParityGate(shown, spec, feeds, reference, tolerance, progress)
        report = _checked_graphs(
            shown,
            gate,
            work,
            optimize=optimize,
            attention=attention,
            precision=precision,
            progress=progress,
        )
        if split:
            manifest["graphs"], report["split_vs_pytorch"] = check_split(gate, work, ENCODING)
        progress(f"write: {out}")
        spec = write_manifest(work, {**manifest, "parity": report})
    progress(done_line(spec, started))
    return spec


def _checked_graphs(
    shown: str,
    gate: ParityGate,
    work: Path,
    *,
    optimize: bool,
    attention: tuple[int, int],
    precision: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The verify, optimise and fp16 or int8 stages: the traced graph, then each graph made from it,
    must pass the parity gate; the last one becomes model.onnx. Returns bundle.json's `parity`.
    """
    chosen = work / "traced.onnx"
    report: dict[str, Any] = {"onnx_vs_pytorch": gate.check("verify", chosen)}
    if optimize:
        report |= _optimise(gate, chosen, work / "optimised.onnx", attention, progress)
        chosen = work / "optimised.onnx"
    if precision == "fp16":
        report |= _fp16(shown, gate, chosen, work / "fp16.onnx")
    elif precision == "int8":
        report |= quantise_int8(shown, gate, chosen, work / "int8.onnx", progress)
    if precision != "fp32":
        chosen = work / f"{precision}.onnx"
    report["precision"] = precision
    chosen.rename(work / "model.onnx")
    return report


def _optimise(
    gate: ParityGate,
    source: Path,
    target: Path,
    attention: tuple[int, int],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The optimise stage: ONNX Runtime's transformer fusions, kept portable (no
    provider-specific rewrites), and the fused graph's parity with PyTorch.

    `attention` is the text encoder's (heads, hidden size): the optimiser cannot read
    them from a BLIP graph, and without them it fuses no attention at all. BLIP's
    vision and text encoders share both in every released size.
    """
    heads, hidden = attention
    optimised = optimize_model(
        str(source),
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        use_gpu=False,
    )
    optimised.save_model_to_file(str(target))
    fused = {op: n for op, n in optimised.get_fused_operator_statistics().items() if n}
    progress(f"optimise: fused {fused or 'nothing'}")
    return {"optimised_vs_pytorch": gate.check("optimise", target), "fusions": fused}


def _fp16(shown: str, gate: ParityGate, source: Path, target: Path) -> dict[str, Any]:
    """The fp16 stage: fp16 weights and arithmetic, with the overflow-prone ops and the ITM
    head in fp32, kept only if its verdicts agree with fp32's often enough."""
    model = OnnxModel(onnx.load(str(source)))
    head = [node.name for node in model.model.graph.node if "/itm_head/" in node.name]
    if not head:
        raise ExportError(shown, "no ITM head nodes found in the graph to keep in fp32")
    model.convert_float_to_float16(
        keep_io_types=True, op_block_list=list(FP32_OPS), node_block_list=head
    )
    model.save_model_to_file(str(target))
    return gate.check_fp16(source, target, min_agreement=FP16_MIN_AGREEMENT)


def _load(checkpoint: Path, shown: str) -> tuple[BlipForImageTextRetrieval, Any]:
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
    fp16: bool,
    max_batch: int,
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
    return bundle_manifest(
        name=name,
        version=version,
        architecture=ARCHITECTURE,
        image=image,
        text={
            "max_tokens": max_text_tokens,
            "pad_token": tokenizer.pad_token,
            "pad_id": int(tokenizer.pad_token_id),
        },
        threshold=threshold,
        calibration={"method": "none"},
        opset=opset,
        fp16=fp16,
        max_batch=max_batch,
        exporter={"transformers": transformers.__version__},
    )


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
