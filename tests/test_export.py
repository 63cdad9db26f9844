"""Exporting a BLIP ITM checkpoint to a model bundle, checked against transformers itself."""

from __future__ import annotations

import io
import json
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, BlipForImageTextRetrieval

import export.blip
import export.bundling
import export.parity
import export.quantise
import worker.preprocess
from export.blip import export_blip
from export.tiny import WORDS, make_tiny_checkpoint, tiny_vocab
from worker.bundle import BundleSpec, load_bundle
from worker.config import FetchLimits
from worker.errors import ExportError
from worker.images import decode_image
from worker.scoring import OnnxScorer

torch.set_num_threads(1)

CAPTIONS = [
    "a red circle",
    "Two BLUE squares in the top-left corner, next to a tiny yellow triangle!",
    "a zebra-striped xylophone",  # words outside the vocabulary, spelled in pieces
    " ".join(["three green stars above a small house"] * 12),  # over 64 tokens: truncated
    "dog",
    "a photo of a cat sitting on a chair",
]


@dataclass(frozen=True)
class Exported:
    """The module's one export: checkpoint, bundle, manifest and progress lines."""

    checkpoint: Path
    bundle: Path
    spec: BundleSpec
    progress: list[str]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A tiny random checkpoint and its bundle, exported once for the module."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", seed=0)
    lines: list[str] = []
    spec = export_blip(checkpoint, root / "bundle", name="tiny-itm", progress=lines.append)
    return Exported(checkpoint, root / "bundle", spec, lines)


def _picture(width: int, height: int, seed: int) -> Image.Image:
    """Shapes on a gradient with some noise, so resampling has detail to get wrong."""
    rng = random.Random(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = 255 * (0.3 + 0.4 * x * np.array([1.0, 0.2, 0.6]) + 0.3 * y * np.array([0.1, 0.9, 0.4]))
    noise = np.random.default_rng(seed).normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
        box = (x0, y0, x0 + rng.randint(8, width // 2), y0 + rng.randint(8, height // 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        rng.choice([draw.ellipse, draw.rectangle])(box, fill=fill)
    return image


def _encoded(image: Image.Image, mode: str, fmt: str) -> bytes:
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = Image.new("L", image.size, 255)
        ImageDraw.Draw(alpha).rectangle((0, 0, image.width // 3, image.height), fill=90)
        image.putalpha(alpha)
    else:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _posted_images() -> list[Image.Image]:
    """Pictures as the worker sees them: encoded in several modes, decoded by decode_image."""
    cases = [
        ((96, 96), "RGB", "JPEG"),
        ((200, 64), "RGB", "PNG"),
        ((50, 180), "RGBA", "PNG"),
        ((123, 77), "L", "JPEG"),
        ((640, 480), "RGB", "JPEG"),
        ((33, 41), "L", "PNG"),
    ]
    return [
        decode_image(_encoded(_picture(w, h, seed=i), mode, fmt), FetchLimits())
        for i, ((w, h), mode, fmt) in enumerate(cases)
    ]


@pytest.fixture(scope="module")
def reference(exported: Exported) -> tuple[list[Image.Image], np.ndarray]:
    """Posted pictures and their match probabilities the way a transformers user computes them."""
    images = _posted_images()
    processor = AutoProcessor.from_pretrained(exported.checkpoint)
    model = BlipForImageTextRetrieval.from_pretrained(exported.checkpoint).eval()
    inputs = processor(
        images=images, text=CAPTIONS, return_tensors="pt", padding=True, truncation=True
    )
    with torch.inference_mode():
        itm_score = model(**inputs).itm_score
    return images, torch.softmax(itm_score, dim=-1)[:, 1].double().numpy()


def test_export_writes_a_bundle_the_worker_loads(exported: Exported) -> None:
    """The exported directory holds exactly the bundle files, the two-graph form's
    included, and passes load_bundle."""
    bundle = load_bundle(exported.bundle)
    assert bundle.spec == exported.spec
    assert bundle.spec.model_id == "tiny-itm@1"
    assert sorted(p.name for p in exported.bundle.iterdir()) == [
        "bundle.json",
        "image.onnx",
        "model.onnx",
        "text.onnx",
        "tokenizer.json",
    ]
    assert sorted(p.name for p in exported.bundle.parent.iterdir()) == ["bundle", "checkpoint"]


def test_manifest_follows_the_checkpoint_processor(exported: Exported) -> None:
    """Image size, filter, normalisation and text limits come from the checkpoint's processor."""
    processor = AutoProcessor.from_pretrained(exported.checkpoint)
    image, text = exported.spec.image, exported.spec.text
    assert (image.height, image.width, image.resample) == (64, 64, "bicubic")
    assert image.rescale_factor == pytest.approx(1 / 255)
    assert image.mean == pytest.approx(processor.image_processor.image_mean)
    assert image.std == pytest.approx(processor.image_processor.image_std)
    assert (text.max_tokens, text.pad_token, text.pad_id) == (64, "[PAD]", 0)
    assert exported.spec.raw["exporter"]["onnx_opset"] == 17
    assert exported.spec.raw["output"]["meaning"] == "match_probability"


def test_parity_is_recorded_within_tolerance(exported: Exported) -> None:
    """bundle.json records parity of the traced, the optimised and the two graphs over 63
    pairs."""
    parity = exported.spec.raw["parity"]
    for stage in ("onnx_vs_pytorch", "optimised_vs_pytorch", "split_vs_pytorch"):
        figures = parity[stage]
        assert figures["n_pairs"] == sum(export.parity.PARITY_BATCHES) == 63
        assert figures["tolerance"] == 1e-4
        assert 0 <= figures["mean_abs_diff"] <= figures["max_abs_diff"] <= 1e-4
        assert figures["decision_agreement"] == 1.0
    assert parity["precision"] == "fp32"
    assert parity["fusions"]["SkipLayerNormalization"] > 0
    assert parity["fusions"]["Attention"] > 0  # told the heads, the optimiser fuses attention


def test_progress_reports_each_stage_in_order(exported: Exported) -> None:
    """One progress line per stage: load, trace, split, verify, optimise, split's parity,
    write, then a summary."""
    stages = [line.split(":", 1)[0] for line in exported.progress]
    assert stages == [
        *("load", "trace", "split", "verify", "optimise", "optimise", "split", "write", "done")
    ]
    assert "peak memory" in exported.progress[-1]


def test_parity_set_spans_batches_and_caption_lengths(exported: Exported) -> None:
    """The parity set has batches 1..32 and captions from one token to the token limit."""
    bundle = load_bundle(exported.bundle)
    feeds = export.parity.parity_feeds(bundle.spec, bundle.text_encoder())
    assert [f["input_ids"].shape[0] for f in feeds] == [1, 2, 4, 8, 16, 32]
    lengths = np.concatenate([f["attention_mask"].sum(axis=1) for f in feeds])
    assert lengths.min() <= 3 and lengths.max() == bundle.spec.text.max_tokens


def test_fp16_export_keeps_verdicts_and_records_agreement(
    exported: Exported, tmp_path: Path
) -> None:
    """An fp16 bundle agrees with fp32 on at least 99.5% of verdicts and says it is fp16."""
    spec = export_blip(exported.checkpoint, tmp_path / "half", fp16=True, progress=lambda _: None)
    parity = spec.raw["parity"]
    assert parity["precision"] == "fp16" and spec.raw["tensorrt"]["fp16"] is True
    assert parity["fp16_vs_fp32"]["decision_agreement"] >= 0.995
    assert 0 < parity["fp16_vs_fp32"]["max_abs_diff"] < 0.01
    fp32_size = (exported.bundle / "model.onnx").stat().st_size
    assert (tmp_path / "half" / "model.onnx").stat().st_size < 0.7 * fp32_size
    scorer = OnnxScorer(load_bundle(tmp_path / "half"), providers=("cpu",))
    assert scorer.score(_posted_images()[:2], CAPTIONS[:2]).shape == (2,)


def test_fp16_below_the_agreement_gate_fails(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fp16 graph that changes verdicts too often is refused and leaves no bundle."""
    monkeypatch.setattr(export.blip, "FP16_MIN_AGREEMENT", 1.01)
    with pytest.raises(ExportError, match="agrees with fp32 on"):
        export_blip(exported.checkpoint, tmp_path / "half", fp16=True, progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_int8_export_keeps_verdicts_and_records_agreement(
    exported: Exported, tmp_path: Path
) -> None:
    """An int8 bundle has int8 linear layers but an fp32 ITM head, agrees with fp32 on at
    least 99.5% of verdicts, says it is int8, and loads and scores in the worker."""
    import onnx

    spec = export_blip(exported.checkpoint, tmp_path / "int8", int8=True, progress=lambda _: None)
    parity = spec.raw["parity"]
    assert parity["precision"] == "int8" and spec.raw["tensorrt"]["fp16"] is False
    assert parity["int8_min_agreement"] == 0.995
    assert parity["int8_vs_fp32"]["decision_agreement"] >= 0.995
    assert 0 < parity["int8_vs_fp32"]["max_abs_diff"] < 0.05
    assert parity["int8_vs_pytorch"]["n_pairs"] == 63
    nodes = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node
    integer = [n.name for n in nodes if n.op_type == "MatMulInteger"]
    assert integer and not [name for name in integer if "/itm_head/" in name]
    assert {n.op_type for n in nodes if "/itm_head/" in n.name} == {"MatMul", "Add"}
    fp32_size = (exported.bundle / "model.onnx").stat().st_size
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.75 * fp32_size
    loaded = load_bundle(tmp_path / "int8")
    assert loaded.spec.raw["parity"]["precision"] == "int8"
    scorer = OnnxScorer(loaded, providers=("cpu",))
    scores = scorer.score(_posted_images(), CAPTIONS)
    assert scores.shape == (6,) and not np.isnan(scores).any()


def test_int8_below_the_agreement_gate_fails(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int8 graph that changes verdicts too often is refused, saying why, and leaves no
    bundle."""
    monkeypatch.setattr(export.quantise, "INT8_MIN_AGREEMENT", 1.01)
    with pytest.raises(ExportError, match=r"the int8 graph agrees with fp32 on 100\.0% of"):
        export_blip(exported.checkpoint, tmp_path / "int8", int8=True, progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_fp16_and_int8_together_are_refused(exported: Exported, tmp_path: Path) -> None:
    """Asking for both fp16 and int8 fails at once with a message naming both, writing nothing;
    the command line refuses the two flags together as a usage error."""
    from click.testing import CliRunner

    from export.commands import export as export_group

    with pytest.raises(ExportError, match="fp16 and int8 exclude each other"):
        export_blip(
            exported.checkpoint, tmp_path / "b", fp16=True, int8=True, progress=lambda _: None
        )
    assert list(tmp_path.iterdir()) == []
    args = ["blip", "--checkpoint", str(exported.checkpoint), "--out", str(tmp_path / "b")]
    result = CliRunner().invoke(export_group, [*args, "--fp16", "--int8"])
    assert result.exit_code == 2
    assert "give --fp16 (GPUs) or --int8 (CPUs), not both" in result.output
    assert list(tmp_path.iterdir()) == []


def test_unoptimised_export_keeps_the_plain_graph(exported: Exported, tmp_path: Path) -> None:
    """--no-optimize leaves ONNX Runtime's fused ops out of the graph (for TensorRT's own)."""
    import onnx

    export_blip(exported.checkpoint, tmp_path / "plain", optimize=False, progress=lambda _: None)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node}
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops


def test_tensorrt_profile_and_caches_are_recorded_and_used(
    exported: Exported, tmp_path: Path
) -> None:
    """bundle.json's TensorRT profile becomes provider options with cache folders under the
    engine directory (named per model, GPU and release by `worker.providers.EngineKey`)."""
    from worker.config import TensorRtTuning
    from worker.providers import tensorrt_options

    trt = exported.spec.raw["tensorrt"]
    assert trt["profile"] == {"batch": [1, 8, 32], "sequence": [1, 32, 64]}
    cache = tmp_path / "engine-key"
    options = tensorrt_options(load_bundle(exported.bundle).spec, cache, TensorRtTuning())
    assert options["trt_profile_max_shapes"] == (
        "pixel_values:32x3x64x64,input_ids:32x64,attention_mask:32x64"
    )
    assert options["trt_profile_min_shapes"].startswith("pixel_values:1x3x64x64")
    assert options["trt_engine_cache_path"] == str(cache / "engines")
    assert (cache / "timing").is_dir() and options["trt_engine_cache_enable"] is True


def test_unreachable_hub_id_fails_fast_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id on a machine whose hub is unreachable fails at once, saying to pass a directory."""
    import time

    from worker.demo.embedded import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with pytest.raises(ExportError, match="pass its directory"):
        export_blip("Salesforce/blip-itm-base-coco", tmp_path / "b", progress=lambda _: None)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("batch", [1, 6], ids=["single", "batched"])
def test_onnx_scorer_agrees_with_transformers(
    exported: Exported, reference: tuple[list[Image.Image], np.ndarray], batch: int
) -> None:
    """OnnxScorer on the bundle scores as transformers' processor plus model, within 1e-3."""
    (images, expected), captions = reference, CAPTIONS
    scorer = OnnxScorer(load_bundle(exported.bundle), providers=("cpu",))
    actual = np.concatenate(
        [scorer.score(images[i : i + batch], captions[i : i + batch]) for i in range(0, 6, batch)]
    )
    assert np.abs(actual - expected).max() <= 1e-3
    # The agreement means something only if scores move with the inputs.
    assert np.ptp(expected) > 0.05


def test_agreement_check_catches_a_wrong_resampling_filter(
    exported: Exported, reference: tuple[list[Image.Image], np.ndarray]
) -> None:
    """A bundle resizing with bilinear instead of the checkpoint's bicubic misses by over 1e-3."""
    images, expected = reference
    bundle = load_bundle(exported.bundle)
    wrong = replace(bundle.spec, image=replace(bundle.spec.image, resample="bilinear"))
    scorer = OnnxScorer(replace(bundle, spec=wrong), providers=("cpu",))
    assert np.abs(scorer.score(images, CAPTIONS) - expected).max() > 1e-3


def test_export_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    """A checkpoint path that does not exist is refused by name, and no bundle appears."""
    with pytest.raises(ExportError, match="no such checkpoint directory") as caught:
        export_blip(tmp_path / "nowhere", tmp_path / "bundle", progress=lambda _: None)
    assert caught.value.checkpoint == str(tmp_path / "nowhere")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "no config.json"),
        ("{not json", "config.json is not JSON"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "not a BLIP image-text-matching"),
        (
            {"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]},
            "not a BLIP image-text-matching",
        ),
    ],
    ids=["no-config", "bad-json", "bert", "blip-captioning"],
)
def test_export_refuses_a_checkpoint_that_is_not_blip_itm(
    tmp_path: Path, config: dict[str, object] | str | None, message: str
) -> None:
    """A directory that is not a BLIP ITM checkpoint is refused with the reason."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (checkpoint / "config.json").write_text(text)
    with pytest.raises(ExportError, match=message):
        export_blip(checkpoint, tmp_path / "bundle", progress=lambda _: None)
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_a_checkpoint_without_itm_head_weights(
    exported: Exported, tmp_path: Path
) -> None:
    """Weights missing from the checkpoint are refused rather than filled with random values."""
    checkpoint = shutil.copytree(exported.checkpoint, tmp_path / "checkpoint")
    weights = load_file(checkpoint / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("itm_head.")}
    save_file(kept, checkpoint / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match="weights missing for itm_head"):
        export_blip(checkpoint, tmp_path / "bundle", progress=lambda _: None)
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_an_existing_bundle_directory(exported: Exported, tmp_path: Path) -> None:
    """Export never writes over an existing directory."""
    (tmp_path / "bundle").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_blip(exported.checkpoint, tmp_path / "bundle", progress=lambda _: None)
    assert list((tmp_path / "bundle").iterdir()) == []


def test_export_refuses_more_text_tokens_than_positions(exported: Exported, tmp_path: Path) -> None:
    """max_text_tokens beyond the text model's position embeddings is refused."""
    with pytest.raises(ExportError, match="exceeds the model's 64 positions"):
        export_blip(
            exported.checkpoint, tmp_path / "bundle", max_text_tokens=65, progress=lambda _: None
        )


def test_failed_parity_leaves_no_bundle(exported: Exported, tmp_path: Path) -> None:
    """When ONNX Runtime differs from PyTorch beyond tolerance, export fails and leaves nothing."""
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_blip(
            exported.checkpoint, tmp_path / "bundle", tolerance=1e-12, progress=lambda _: None
        )
    assert list(tmp_path.iterdir()) == []


def test_export_and_worker_share_one_preprocessing() -> None:
    """Export builds model inputs with the worker's own functions, not copies of them."""
    assert export.bundling.TextEncoder is worker.preprocess.TextEncoder
    assert export.parity.preprocess_images is worker.preprocess.preprocess_images
    assert export.parity.TextEncoder is worker.preprocess.TextEncoder


def test_tiny_checkpoint_is_deterministic(tmp_path: Path) -> None:
    """The same seed gives the same weights; another seed gives others."""
    first = load_file(make_tiny_checkpoint(tmp_path / "a", seed=3) / "model.safetensors")
    again = load_file(make_tiny_checkpoint(tmp_path / "b", seed=3) / "model.safetensors")
    other = load_file(make_tiny_checkpoint(tmp_path / "c", seed=4) / "model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["itm_head.weight"], other["itm_head.weight"])


def test_tiny_vocabulary_spells_every_word_without_unknowns(exported: Exported) -> None:
    """Every caption word is one token, and an unseen word is spelled in pieces, never [UNK]."""
    tokenizer = AutoProcessor.from_pretrained(exported.checkpoint).tokenizer
    vocab = tiny_vocab()
    assert list(vocab)[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(set(WORDS)) == len(WORDS)
    assert all(len(tokenizer.tokenize(word)) == 1 for word in WORDS)
    assert "[UNK]" not in tokenizer.tokenize("Quizzical jackdaws, 42 of them!")
