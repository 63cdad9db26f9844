"""The two-graph bundle form: written by the export, checked on load, used to explain."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.blip import export_blip
from export.tiny import make_tiny_checkpoint
from worker.bundle import load_bundle
from worker.errors import BundleFieldError, BundleFileMissing
from worker.explain import explain_batch
from worker.scoring import OnnxScorer

torch.set_num_threads(1)

CAPTIONS = ["a red circle", "two blue squares on the left", "a cat", "a big yellow star"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLIP checkpoint exported with its two graphs."""
    root = tmp_path_factory.mktemp("graphs")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", seed=0)
    export_blip(checkpoint, root / "bundle", name="tiny-itm", progress=lambda _: None)
    return root / "bundle"


def _pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 56, 3), dtype=np.uint8)) for i in range(2)
    ]


def _one_graph(bundle: Path, into: Path) -> Path:
    """The same bundle as an older export writes it: no `graphs`, no image or text graph."""
    out = into / "one-graph"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    del manifest["graphs"]
    (out / "bundle.json").write_text(json.dumps(manifest))
    (out / "image.onnx").unlink()
    (out / "text.onnx").unlink()
    return out


def test_manifest_declares_the_two_graphs_and_their_parity(bundle: Path) -> None:
    """bundle.json names both graphs with their hashes and the image encoding, and records
    the composition's parity with PyTorch."""
    spec = load_bundle(bundle).spec
    assert spec.graphs is not None
    assert (spec.graphs.image_file, spec.graphs.text_file) == ("image.onnx", "text.onnx")
    assert spec.graphs.encoding == ("image_embeds",)
    parity = spec.raw["parity"]["split_vs_pytorch"]
    assert parity["n_pairs"] == 63 and parity["max_abs_diff"] <= 1e-4


def test_two_graph_variants_score_as_the_one_graph_does(bundle: Path) -> None:
    """Captions scored against encoded pictures give the one graph's probabilities."""
    scorer = OnnxScorer(load_bundle(bundle), providers=("cpu",))
    pictures = _pictures()
    image_of = [0, 1, 1, 0]
    direct = scorer.score([pictures[i] for i in image_of], CAPTIONS)
    varied = scorer.score_variants(pictures, CAPTIONS, image_of)
    np.testing.assert_allclose(varied, direct, atol=1e-5)


def test_one_graph_bundles_still_load_and_explain(bundle: Path, tmp_path: Path) -> None:
    """A bundle without the two graphs loads, and explains through model.onnx with the same
    figures."""
    older = load_bundle(_one_graph(bundle, tmp_path))
    assert older.spec.graphs is None and older.split_paths is None
    one = OnnxScorer(older, providers=("cpu",), threshold=1.0)
    two = OnnxScorer(load_bundle(bundle), providers=("cpu",), threshold=1.0)
    pictures = _pictures()
    scores = [float(s) for s in one.score(pictures, CAPTIONS[:2])]
    by_one = explain_batch(one, pictures, CAPTIONS[:2], scores)
    by_two = explain_batch(two, pictures, CAPTIONS[:2], scores)
    for a, b in zip(by_one, by_two, strict=True):
        assert a is not None and b is not None
        assert [p.text for p in a.phrases] == [p.text for p in b.phrases]
        np.testing.assert_allclose(
            [p.delta for p in a.phrases], [p.delta for p in b.phrases], atol=1e-5
        )


def test_a_changed_graph_or_a_missing_one_is_refused(bundle: Path, tmp_path: Path) -> None:
    """load_bundle checks the two graphs' files as it checks model.onnx."""
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    with (changed / "text.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleFieldError, match=r"text\.onnx sha256"):
        load_bundle(changed)
    missing = tmp_path / "missing"
    shutil.copytree(bundle, missing)
    (missing / "image.onnx").unlink()
    with pytest.raises(BundleFileMissing, match=r"image\.onnx"):
        load_bundle(missing)
