"""Model-only and decode sections of `benchmarks.throughput`.

Model only: the bundle's scorer on pictures already decoded and resized to
its input, so what is timed is tokenising, normalising and the ONNX Runtime
call: the rate the model reaches alone, which the worker is held against.

PyTorch eager against ONNX Runtime: the same BLIP ITM architecture the export
step takes, randomly initialised (no weights can be downloaded here; speed
does not depend on them), run by PyTorch and by the exported bundle on the
same pictures and captions with the same threads.

Decode: the worker's path (`decode_image` at the model's `decode_size`: JPEG
draft, box reduce, then the final resize) against the naive one (decode at
full size, then resize), one thread, on 1080p and 4 MP JPEG photos.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from worker.config import FetchLimits
from worker.images import decode_image, decode_size
from worker.preprocess import RESAMPLE, ImageSpec

BATCHES = (1, 8, 32, 64)


def _timed(call: Callable[[], Any], repeat: int) -> list[float]:
    call()  # warm-up: memory allocated and kernels chosen before timing
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def _figures(batch: int, times: Sequence[float]) -> dict[str, float]:
    median = statistics.median(times)
    return {"batch": batch, "pairs_per_s": batch / median, "latency_ms": median * 1000}


def model_only(
    scorer: Any, pictures: Sequence[Image.Image], captions: Sequence[str], seconds: float = 6.0
) -> list[dict[str, float]]:
    """Pairs per second and median latency per call at each of BATCHES, pictures at the
    model's input size."""
    spec: ImageSpec = scorer.bundle.spec.image
    ready = [p.resize((spec.width, spec.height), RESAMPLE[spec.resample]) for p in pictures]
    rows = []
    for batch in BATCHES:
        images = [ready[i % len(ready)] for i in range(batch)]
        texts = [captions[i % len(captions)] for i in range(batch)]
        once = _timed(lambda: scorer.score(images, texts), 1)[0]  # noqa: B023
        repeat = max(3, min(50, int(seconds / max(once, 1e-3))))
        rows.append(_figures(batch, _timed(lambda: scorer.score(images, texts), repeat)))  # noqa: B023
    return rows


def blip_checkpoint(out: Path, size: str) -> Path:
    """A random BLIP ITM checkpoint: `base` is BLIP base (ViT-B/16 at 384 px, BERT-base);
    `small` keeps the architecture and depth at 224 px and 384 wide, so that a batch of 32
    runs in seconds on two cores."""
    from export.tiny import make_tiny_checkpoint

    if size == "base":
        from benchmarks.export_blip_base import base_checkpoint

        return base_checkpoint(out)
    return make_tiny_checkpoint(
        out, image_size=224, hidden_size=384, num_layers=12, num_heads=6, patch_size=16
    )


def torch_against_onnx(
    checkpoint: Path, bundle: Path, threads: int, batch: int = 32, repeat: int = 3
) -> dict[str, float]:
    """Pairs per second of PyTorch eager, the bundle's ONNX graph and its dynamic int8
    quantisation, on the same input tensors and the same threads."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BlipForImageTextRetrieval

    from worker.bundle import load_bundle
    from worker.preprocess import preprocess_images
    from worker.testing import shape_image

    torch.set_num_threads(threads)
    loaded = load_bundle(bundle)
    spec = loaded.spec
    pictures = [
        Image.open(io.BytesIO(shape_image(c, s, seed=i))).convert("RGB")
        for i, (c, s) in enumerate([("red", "circle"), ("blue", "square")] * (batch // 2))
    ]
    ids, mask = loaded.text_encoder().encode(
        [f"a picture of {i} red circles and a blue square" for i in range(batch)]
    )
    pixels = preprocess_images(pictures, spec.image)
    feed = {
        spec.input_names["pixel_values"]: pixels,
        spec.input_names["input_ids"]: ids,
        spec.input_names["attention_mask"]: mask,
    }
    model = BlipForImageTextRetrieval.from_pretrained(checkpoint)
    model.eval()

    def eager() -> np.ndarray:
        with torch.inference_mode():
            logits = model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                pixel_values=torch.from_numpy(pixels),
                use_itm_head=True,
            ).itm_score
        return torch.softmax(logits, dim=-1)[:, 1].numpy()

    def session(path: Path) -> Callable[[], np.ndarray]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run
        return lambda: np.asarray(run([spec.output_name], feed)[0]).reshape(batch)

    int8 = bundle.parent / f"{bundle.name}-int8.onnx"
    quantize_dynamic(
        loaded.model_path,
        int8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        # the fused ops defeat ONNX shape inference; every float tensor here is float32
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    fp32_run, int8_run = session(loaded.model_path), session(int8)
    seconds = {
        name: statistics.median(_timed(call, repeat))
        for name, call in (("torch", eager), ("onnx", fp32_run), ("onnx_int8", int8_run))
    }
    return {
        "batch": batch,
        "threads": threads,
        **{f"{name}_pairs_per_s": batch / t for name, t in seconds.items()},
        "ratio": seconds["torch"] / seconds["onnx"],
        "ratio_int8": seconds["torch"] / seconds["onnx_int8"],
        "max_score_diff": float(np.max(np.abs(eager() - fp32_run()))),
        "int8_verdicts_agree": float(np.mean((int8_run() >= 0.5) == (fp32_run() >= 0.5))),
    }


def photo_jpeg(photo: Image.Image, size: tuple[int, int], quality: int = 90) -> bytes:
    """`photo` resized to `size` and saved as a camera would: a baseline JPEG."""
    out = io.BytesIO()
    photo.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
        out, format="JPEG", quality=quality
    )
    return out.getvalue()


def decode(
    photos: Sequence[Image.Image], spec: ImageSpec, seconds: float = 3.0
) -> list[dict[str, Any]]:
    """Images per second, one thread, worker path against naive, at 1080p and 4 MP."""
    limits = FetchLimits()
    target = (spec.width, spec.height)
    resample = RESAMPLE[spec.resample]
    keep = decode_size(target)

    def worker_path(data: bytes) -> Image.Image:
        return decode_image(data, limits, min_size=keep).resize(target, resample)

    def naive(data: bytes) -> Image.Image:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        return image.convert("RGB").resize(target, resample)

    rows = []
    for label, size in (("1080p", (1920, 1080)), ("4 MP", (2304, 1728))):
        jpegs = [photo_jpeg(p, size) for p in photos[:8]]
        rates = {}
        for name, path in (("worker", worker_path), ("naive", naive)):
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                path(jpegs[count % len(jpegs)])
                count += 1
            rates[name] = count / (time.perf_counter() - started)
        rows.append(
            {
                "size": label,
                "pixels": size[0] * size[1],
                "worker_per_s": rates["worker"],
                "naive_per_s": rates["naive"],
                "ratio": rates["worker"] / rates["naive"],
            }
        )
    return rows
