"""PyTorch → ONNX export of image-text-matching checkpoints into itmguard model bundles.

Needs the `export` extra (torch, transformers, onnx). Model inputs are built
with the worker's own preprocessing and the bundle is written with the
worker's own bundle code, so export and worker agree by construction.
"""

from export.blip import export_blip
from export.parity import Parity, measure_parity
from export.tiny import make_tiny_checkpoint

__all__ = ["Parity", "export_blip", "make_tiny_checkpoint", "measure_parity"]
