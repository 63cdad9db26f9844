"""The GPU check's models: BLIP ITM bundles at the real base size with random weights.

Runs in the check's export environment (torch, the `export` extra). It builds a randomly
initialised `BlipForImageTextRetrieval` from BLIP-base's own configuration (ViT-B/16 at
384 px, a BERT-base text encoder; `benchmarks.export_blip_base`), exports it with the real
`export_blip` (TensorRT profile up to batch 128), and writes beside it:

- `fp32/`: the bundle as `itmguard export blip` writes it;
- `fp16/`: the same bundle with its graph in fp16 and LayerNorm, Softmax and the ITM head
  kept in fp32, as `--fp16` stores it, for the CUDA provider's fp16 run (no parity gate:
  random weights give scores near the threshold, and the check measures agreement itself);
- `parity.npz`: the export's 63-pair parity set as model inputs, whose decisions the check
  compares across providers and precisions.

Speed does not depend on the weights, so the figures hold for a trained checkpoint.

    python -m benchmarks.gpu_export --out DIR [--tiny]

`--tiny` exports the tests' tiny checkpoint instead, for a dry run on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.transformers.onnx_model import OnnxModel

from export.blip import FP32_OPS, export_blip
from export.parity import parity_feeds
from worker.bundle import load_bundle, write_manifest

MAX_BATCH = 128
MAX_TOKENS = 35


def fp16_bundle(fp32: Path, out: Path) -> None:
    """A copy of the bundle `fp32` whose graph is fp16 outside LayerNorm, Softmax and the ITM
    head, with its manifest's hash and precision updated."""
    shutil.copytree(fp32, out)
    model = OnnxModel(onnx.load(str(fp32 / "model.onnx")))
    head = [node.name for node in model.model.graph.node if "/itm_head/" in node.name]
    model.convert_float_to_float16(
        keep_io_types=True, op_block_list=list(FP32_OPS), node_block_list=head
    )
    model.save_model_to_file(str(out / "model.onnx"))
    manifest = json.loads((fp32 / "bundle.json").read_text(encoding="utf-8"))
    manifest["parity"] = {**manifest.get("parity", {}), "precision": "fp16"}
    write_manifest(out, manifest)


def parity_inputs(bundle: Path, out: Path) -> int:
    """Save the parity set's inputs to `out` (one batch per array index); returns the pairs."""
    loaded = load_bundle(bundle)
    feeds = parity_feeds(loaded.spec, loaded.text_encoder())
    arrays = {f"{name}_{i}": feed[name] for i, feed in enumerate(feeds) for name in feed}
    np.savez(out, **arrays)
    return sum(len(feed["input_ids"]) for feed in feeds)


def checkpoint(root: Path, *, tiny: bool) -> Path:
    """The random checkpoint: BLIP base, or the tests' tiny one."""
    if tiny:
        from export.tiny import make_tiny_checkpoint

        return make_tiny_checkpoint(root / "checkpoint")
    from benchmarks.export_blip_base import base_checkpoint

    return base_checkpoint(root / "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny model (dry run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    source = checkpoint(args.out, tiny=args.tiny)
    built = time.monotonic() - started
    spec = export_blip(
        source,
        args.out / "fp32",
        name="blip-itm-base-random" if not args.tiny else "blip-itm-tiny-random",
        max_text_tokens=None if args.tiny else MAX_TOKENS,
        max_batch=MAX_BATCH,
        progress=lambda line: print(f"  {line}", flush=True),
    )
    fp16_bundle(args.out / "fp32", args.out / "fp16")
    pairs = parity_inputs(args.out / "fp32", args.out / "parity.npz")
    shutil.rmtree(source)
    facts = {
        "model_id": spec.model_id,
        "image": [spec.image.width, spec.image.height],
        "max_tokens": spec.text.max_tokens,
        "parity_pairs": pairs,
        "checkpoint_s": round(built, 1),
        "export_s": round(time.monotonic() - started - built, 1),
        "model_mib": round((args.out / "fp32" / "model.onnx").stat().st_size / 2**20),
    }
    (args.out / "export.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
