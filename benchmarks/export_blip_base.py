"""Export wall time and peak memory at the size of a real BLIP ITM checkpoint.

No pretrained weights can be downloaded here, so this builds a randomly
initialised `BlipForImageTextRetrieval` with BLIP-base's own configuration
(ViT-B/16 at 384 px, BERT-base text encoder, 30,524-token vocabulary) and runs
the real `export_blip` on it: trace, parity over the 63-pair set, fusions, and
optionally fp16. Random weights give the same graph, sizes and costs as the
trained ones; only the scores are meaningless.

    .venv/bin/python -m benchmarks.export_blip_base [--fp16]

Prints each export stage, then wall time and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
)

from export.blip import export_blip
from export.tiny import tiny_vocab

BASE_VOCAB = 30_524


def base_checkpoint(out: Path) -> Path:
    vocab = tiny_vocab()
    vocab |= {f"tok{i}": i for i in range(len(vocab), BASE_VOCAB)}
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=512)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tokenizer)
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(BlipConfig()).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp16", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    started = time.monotonic()
    checkpoint = base_checkpoint(root / "checkpoint")
    print(f"checkpoint built in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    spec = export_blip(checkpoint, root / "bundle", fp16=args.fp16, max_text_tokens=35)
    size = (root / "bundle" / "model.onnx").stat().st_size / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"export of {spec.model_id}: {time.monotonic() - started:.1f}s, model.onnx {size:.0f} MiB, "
        f"peak RSS {peak:.0f} MiB (whole process, checkpoint build included)"
    )


if __name__ == "__main__":
    main()
