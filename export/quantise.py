"""The int8 stage of an export: dynamic int8 quantisation for CPU deployments.

ONNX Runtime's dynamic quantisation stores the weights of the graph's linear layers
(MatMul with a constant weight, and Gemm) as int8, one scale per output channel, and
quantises their activations to uint8 per batch as the model runs; there is no
calibration set to choose. What stays float32:

- the ITM head, whose two logits are the verdict itself, as fp16 keeps it too;
- MatMuls of two activations (attention's query·key and weights·value), whose ranges
  change with every caption and picture;
- every other op: LayerNorm, Softmax, GELU, the patch-embedding convolution and the
  embeddings, which dynamic quantisation does not touch.

The quantised graph passes only if its verdicts agree with the fp32 graph's on at
least `INT8_MIN_AGREEMENT` of the parity set, as an fp16 graph must.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from export.bundling import ParityGate
from worker.errors import ExportError

__all__ = ["INT8_MIN_AGREEMENT", "INT8_OPS", "choose_precision", "quantise_int8"]

INT8_OPS = ("MatMul", "Gemm")
"""Op types whose constant weights an int8 bundle stores as int8."""

INT8_MIN_AGREEMENT = 0.995
"""Share of parity-set verdicts an int8 graph must give as its fp32 graph does."""

_HEAD = "/itm_head/"
_INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def choose_precision(shown: str, *, fp16: bool, int8: bool) -> str:
    """The bundle's precision (`fp32`, `fp16` or `int8`) from the export's flags.

    Raises:
        ExportError: both fp16 and int8 are asked for.
    """
    if fp16 and int8:
        raise ExportError(
            shown,
            "fp16 and int8 exclude each other: fp16 is for GPUs (CUDA, TensorRT), "
            "int8 for CPUs; choose one",
        )
    return "fp16" if fp16 else "int8" if int8 else "fp32"


def quantise_int8(
    shown: str, gate: ParityGate, source: Path, target: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The int8 stage: `source` quantised to `target`, kept only if its verdicts agree with
    `source`'s often enough. Returns the figures bundle.json records under `parity`.

    Raises:
        ExportError: the graph has no ITM head to keep in float32, or the int8 graph
            fails the agreement gate.
    """
    graph = onnx.load(str(source)).graph
    head = [node.name for node in graph.node if _HEAD in node.name]
    if not head:
        raise ExportError(shown, "no ITM head nodes found in the graph to keep in fp32")
    candidates = [n for n in graph.node if n.op_type in INT8_OPS and _HEAD not in n.name]
    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=list(INT8_OPS),
        per_channel=True,
        weight_type=QuantType.QInt8,
        # The quantiser rewrites each Gemm as a MatMul named `<gemm>_MatMul` before it
        # looks at the exclusions, so the head is excluded under both names.
        nodes_to_exclude=[*head, *(f"{name}_MatMul" for name in head)],
        # The fused ops (SkipLayerNormalization, BiasGelu) defeat ONNX shape inference;
        # every float tensor of an exported bundle is float32.
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    integer = [n for n in onnx.load(str(target)).graph.node if n.op_type in _INTEGER_OPS]
    if any(_HEAD in n.name for n in integer):
        raise ExportError(shown, "the quantiser reached the ITM head, which must stay in fp32")
    progress(
        f"int8: {len(integer)} of {len(candidates)} MatMul/Gemm nodes outside the ITM head "
        f"quantised (the rest multiply two activations); the ITM head kept in fp32"
    )
    report = gate.check_agreement("int8", source, target, min_agreement=INT8_MIN_AGREEMENT)
    return {**report, "int8_ops": list(INT8_OPS)}
