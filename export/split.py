"""The two-graph form of a bundle: the image encoder and the text-and-match head apart.

Explanations score many variants of a caption against one picture; with the model
as one graph each variant re-runs the image encoder. An exporter that can cut its
model in two hands this module an image module (`pixel_values` in, the picture's
encoding out, one or more tensors) and a text module (`input_ids`,
`attention_mask` and that encoding in, the match probability out). Both are
traced with dynamic batch (and sequence) axes, and their composition in ONNX
Runtime must score the parity set as the PyTorch model does, within the same
tolerance as model.onnx, or the export fails. The graphs are fp32 and unfused
whatever precision model.onnx has; they serve explanations only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.bundling import INPUT_NAMES, OUTPUT_NAME, ParityGate
from export.parity import Feeds, batch_scores
from worker.errors import ExportError

__all__ = ["IMAGE_FILE", "TEXT_FILE", "check_split", "trace_split"]

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"


def trace_split(
    shown: str,
    image_module: torch.nn.Module,
    text_module: torch.nn.Module,
    encoding: Sequence[str],
    example: Feeds,
    work: Path,
    opset: int,
    progress: Callable[[str], None],
) -> None:
    """Trace both halves into `work` on the batch `example` (captions of differing length).

    Raises:
        ExportError: tracing fails, or the image module's outputs do not match `encoding`.
    """
    pixels = torch.from_numpy(example["pixel_values"])
    with torch.inference_mode():
        encoded = _as_tuple(image_module(pixels))
    if len(encoded) != len(encoding):
        raise ExportError(
            shown, f"the image graph gives {len(encoded)} outputs, not {len(encoding)}"
        )
    batch_axis = {0: "batch"}
    sequence_axes = {0: "batch", 1: "sequence"}
    _trace(
        shown,
        image_module,
        (pixels,),
        work / IMAGE_FILE,
        opset,
        inputs=["pixel_values"],
        outputs=list(encoding),
        axes={"pixel_values": batch_axis, **dict.fromkeys(encoding, batch_axis)},
    )
    ids, mask = (torch.from_numpy(example[role]) for role in INPUT_NAMES[1:])
    _trace(
        shown,
        text_module,
        (ids, mask, *encoded),
        work / TEXT_FILE,
        opset,
        inputs=[*INPUT_NAMES[1:], *encoding],
        outputs=[OUTPUT_NAME],
        axes={
            "input_ids": sequence_axes,
            "attention_mask": sequence_axes,
            **dict.fromkeys(encoding, batch_axis),
            OUTPUT_NAME: batch_axis,
        },
    )
    progress(f"split: {IMAGE_FILE} → {', '.join(encoding)} → {TEXT_FILE}")


def check_split(
    gate: ParityGate, work: Path, encoding: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two graphs in `work`, composed in ONNX Runtime, against PyTorch on the parity set.

    Returns:
        bundle.json's `graphs` (`write_manifest` fills in the hashes) and the parity figures
        to record under `parity.split_vs_pytorch`.

    Raises:
        ExportError: the composition is off the reference beyond the gate's tolerance.
    """
    parity = gate.check_scores("split", _composed_scores(work, encoding, gate.feeds))
    graphs = {
        "image": {"file": IMAGE_FILE},
        "text": {"file": TEXT_FILE},
        "encoding": list(encoding),
    }
    return graphs, parity


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _trace(
    shown: str,
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    *,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:
    """`module` traced to `path` (as `export.bundling.export_onnx` traces the one graph).

    Raises:
        ExportError: tracing fails or the ONNX checker refuses the graph.
    """
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(shown, f"ONNX export of {path.name} failed: {exc}") from exc


def _composed_scores(work: Path, encoding: Sequence[str], feeds: Sequence[Feeds]) -> np.ndarray:
    """The parity set scored as the worker's explanations score: image graph, then text."""
    cpu = ["CPUExecutionProvider"]
    image = ort.InferenceSession(str(work / IMAGE_FILE), providers=cpu)
    text = ort.InferenceSession(str(work / TEXT_FILE), providers=cpu)

    def run(feed: Feeds) -> np.ndarray:
        encoded = image.run(list(encoding), {"pixel_values": feed["pixel_values"]})
        names = {role: feed[role] for role in INPUT_NAMES[1:]}
        return np.asarray(
            text.run([OUTPUT_NAME], {**names, **dict(zip(encoding, encoded, strict=True))})[0]
        )

    return batch_scores(run, feeds)
