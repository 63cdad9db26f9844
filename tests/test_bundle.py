"""The worker refuses a model bundle whose files, hash or fields do not check out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.bundle import BUNDLE_FILES, file_sha256, load_bundle
from worker.config import FetchLimits, Settings
from worker.errors import BundleFieldError, BundleFileMissing, BundleHashMismatch, ConfigError
from worker.images import decode_image
from worker.runtime import check_max_batch, open_scorer
from worker.scoring import OnnxScorer
from worker.testing import shape_image


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the exported tiny bundle, free to corrupt."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def _edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    edit(manifest)
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def test_an_untouched_bundle_loads(bundle: Path) -> None:
    """A copy of an exported bundle loads, with its recorded hash matching model.onnx."""
    loaded = load_bundle(bundle)
    assert loaded.spec.model_sha256 == file_sha256(bundle / "model.onnx")
    assert loaded.spec.model_id == "tiny-blip@1"


def test_a_changed_model_is_refused_with_both_hashes(bundle: Path) -> None:
    """A model.onnx changed after export is refused; the message gives both sha256 digests."""
    expected = json.loads((bundle / "bundle.json").read_text())["model_sha256"]
    with (bundle / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    actual = file_sha256(bundle / "model.onnx")
    with pytest.raises(BundleHashMismatch) as caught:
        load_bundle(bundle)
    assert (caught.value.expected, caught.value.actual) == (expected, actual)
    assert expected in str(caught.value) and actual in str(caught.value)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("threshold",), "'threshold' is a required property"),
        (("model_sha256",), "'model_sha256' is a required property"),
        (("text", "max_tokens"), "text: 'max_tokens' is a required property"),
        (("inputs", "attention_mask"), "inputs: 'attention_mask' is a required property"),
    ],
)
def test_a_missing_field_is_refused_by_name(
    bundle: Path, path: tuple[str, ...], named: str
) -> None:
    """A bundle.json without a required field is refused with the field's name and place."""

    def delete(manifest: dict[str, Any]) -> None:
        *parents, leaf = path
        for key in parents:
            manifest = manifest[key]
        del manifest[leaf]

    _edit_manifest(bundle, delete)
    with pytest.raises(BundleFieldError, match=named):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("role", "dtype", "where"),
    [
        ("input_ids", "int32", "inputs/input_ids/dtype"),
        ("pixel_values", "float16", "inputs/pixel_values/dtype"),
    ],
)
def test_a_wrong_input_dtype_is_refused(bundle: Path, role: str, dtype: str, where: str) -> None:
    """An input declared with a dtype the worker does not feed is refused, naming the field."""
    _edit_manifest(bundle, lambda m: m["inputs"][role].update(dtype=dtype))
    with pytest.raises(BundleFieldError, match=where):
        load_bundle(bundle)


def test_a_wrong_output_dtype_is_refused(bundle: Path) -> None:
    """An output declared as anything but float32 probabilities is refused."""
    _edit_manifest(bundle, lambda m: m["output"].update(dtype="float16"))
    with pytest.raises(BundleFieldError, match="output/dtype"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", BUNDLE_FILES)
def test_a_missing_file_is_refused_by_name(bundle: Path, name: str) -> None:
    """A bundle without one of its three files is refused, naming the file."""
    (bundle / name).unlink()
    with pytest.raises(BundleFileMissing, match=f"missing {name}"):
        load_bundle(bundle)


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """A bundle path that is not a directory is refused as missing."""
    with pytest.raises(BundleFileMissing, match="is not a directory"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize("content", [b'{"name": ', b"\xff\xfe not utf-8"], ids=["cut", "binary"])
def test_a_manifest_that_is_not_json_is_refused(bundle: Path, content: bytes) -> None:
    """A bundle.json that is not JSON is refused as such."""
    (bundle / "bundle.json").write_bytes(content)
    with pytest.raises(BundleFieldError, match=r"bundle\.json is not JSON"):
        load_bundle(bundle)


def test_a_manifest_that_is_not_an_object_is_refused(bundle: Path) -> None:
    """A bundle.json holding JSON other than an object is refused at the top level."""
    (bundle / "bundle.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleFieldError, match=r"\(top level\)"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m["inputs"]["input_ids"].update(name="ids"), "'ids'"),
        (lambda m: m["output"].update(name="logits"), "'logits'"),
    ],
    ids=["input", "output"],
)
def test_scorer_refuses_names_the_graph_does_not_have(
    bundle: Path, edit: Callable[[dict[str, Any]], None], named: str
) -> None:
    """OnnxScorer refuses a bundle whose declared tensor names differ from model.onnx's."""
    _edit_manifest(bundle, edit)
    loaded = load_bundle(bundle)  # the manifest itself is well formed
    with pytest.raises(BundleFieldError, match=named) as caught:
        OnnxScorer(loaded, providers=("cpu",))
    assert "input_ids" in str(caught.value)


def test_cpu_settings_reach_the_session_and_leave_scores_alone(tiny_bundle: Path) -> None:
    """ITMGUARD_CPU_THREADS and ITMGUARD_CPU_MEMORY_ARENA configure the session the worker
    opens, and a scorer with one thread and no arena scores as the default one does."""
    images = [
        decode_image(shape_image(c, s, seed=i), FetchLimits())
        for i, (c, s) in enumerate([("red", "circle"), ("blue", "square"), ("green", "circle")])
    ]
    captions = ["a red circle", "a blue square", "a red square"]
    default = open_scorer(
        Settings.from_env({"ITMGUARD_BUNDLE": str(tiny_bundle), "ITMGUARD_PROVIDERS": "cpu"})
    )
    lean = open_scorer(
        Settings.from_env(
            {
                "ITMGUARD_BUNDLE": str(tiny_bundle),
                "ITMGUARD_PROVIDERS": "cpu",
                "ITMGUARD_CPU_THREADS": "1",
                "ITMGUARD_CPU_MEMORY_ARENA": "false",
            }
        )
    )
    options = lean._session.get_session_options()
    assert (options.intra_op_num_threads, options.enable_cpu_mem_arena) == (1, False)
    defaults = default._session.get_session_options()
    assert (defaults.intra_op_num_threads, defaults.enable_cpu_mem_arena) == (0, True)
    assert abs(lean.score(images, captions) - default.score(images, captions)).max() < 1e-6


def test_the_session_runs_one_graph_at_a_time_with_every_optimisation(
    tiny_bundle: Path,
) -> None:
    """OnnxScorer opens its session with every graph optimisation, sequential execution and
    one inter-op thread, while the intra-op threads follow cpu_threads."""
    import onnxruntime as ort

    for cpu_threads in (0, 3):
        scorer = OnnxScorer(load_bundle(tiny_bundle), providers=("cpu",), cpu_threads=cpu_threads)
        options = scorer._session.get_session_options()
        assert (
            options.graph_optimization_level,
            options.execution_mode,
            options.inter_op_num_threads,
            options.intra_op_num_threads,
        ) == (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            ort.ExecutionMode.ORT_SEQUENTIAL,
            1,
            cpu_threads,
        )


def test_a_max_batch_above_the_tensorrt_profile_is_refused(tiny_bundle: Path) -> None:
    """On TensorRT, a max batch larger than the bundle's shape profile is refused at start,
    naming the setting; within the profile, or on another provider, it is accepted."""
    spec = load_bundle(tiny_bundle).spec
    largest = spec.raw["tensorrt"]["profile"]["batch"][2]
    with pytest.raises(ConfigError, match="ITMGUARD_MAX_BATCH") as refused:
        check_max_batch(spec, "TensorrtExecutionProvider", largest + 1)
    assert f"TensorRT profile ({largest})" in str(refused.value)
    check_max_batch(spec, "TensorrtExecutionProvider", largest)
    check_max_batch(spec, "CPUExecutionProvider", largest + 1)


def test_captions_pad_to_the_longest_but_not_below_the_tensorrt_profile(bundle: Path) -> None:
    """A batch of short captions pads to its longest, except where the bundle's TensorRT
    profile starts at a longer sequence: then up to that, with the padding masked out."""
    short = ["a cat", "a red bus"]
    ids, mask = load_bundle(bundle).text_encoder().encode(short)
    assert ids.shape[1] == int(mask.sum(axis=1).max())

    def lengthen(manifest: dict[str, Any]) -> None:
        manifest["tensorrt"]["profile"]["sequence"][0] = 16

    _edit_manifest(bundle, lengthen)
    padded_ids, padded_mask = load_bundle(bundle).text_encoder().encode(short)
    assert padded_ids.shape[1] == 16
    assert (padded_mask.sum(axis=1) == mask.sum(axis=1)).all()
