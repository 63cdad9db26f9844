"""PyTorch → ONNX export of image-text-matching checkpoints into itmguard model bundles.

Needs the `export` extra (torch, transformers, onnx). Model inputs are built
with the worker's own preprocessing and the bundle is written with the
worker's own bundle code, so export and worker agree by construction.
"""

from export.blip import export_blip, resolve_checkpoint
from export.parity import Parity, compare, parity_feeds
from export.tiny import make_tiny_checkpoint

__all__ = [
    "Parity",
    "compare",
    "export_blip",
    "make_tiny_checkpoint",
    "parity_feeds",
    "resolve_checkpoint",
]
