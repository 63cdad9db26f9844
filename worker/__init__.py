"""itmguard's worker: flags posts whose image and caption do not match.

This front door holds what the export step and other tools may use; the rest
of the package is the worker's own. ONNX Runtime is imported only by
`worker.scoring`, so the database and review commands run without it.
"""

from worker.bundle import Bundle, BundleSpec, load_bundle, write_manifest
from worker.config import Settings
from worker.images import decode_image
from worker.preprocess import ImageSpec, TextEncoder, TextSpec, preprocess_images

__all__ = [
    "Bundle",
    "BundleSpec",
    "ImageSpec",
    "Settings",
    "TextEncoder",
    "TextSpec",
    "decode_image",
    "load_bundle",
    "preprocess_images",
    "write_manifest",
]
