"""PyTorch → ONNX export of image-text-matching models into itmguard bundles, and their
calibration.

Needs the `export` extra. Submodules are imported by name (`export.blip`,
`export.calibrate`, …) so that calibrating does not load torch. Model inputs
are built with the worker's own preprocessing and bundles are written with
the worker's own bundle code, so export and worker agree by construction.
"""
