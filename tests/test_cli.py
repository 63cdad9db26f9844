"""The itmguard command, driven through click's CliRunner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from worker.cli import main
from worker.messages import validator
from worker.testing import post_event, shape_image


def test_score_one_image_prints_a_valid_verdict(tiny_bundle: Path, tmp_path: Path) -> None:
    """`score IMAGE CAPTION` prints one verdict JSON that follows the verdict schema."""
    image = tmp_path / "dog.png"
    image.write_bytes(shape_image("red", "circle"))
    result = CliRunner().invoke(
        main, ["score", "--bundle", str(tiny_bundle), str(image), "a red circle"]
    )
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    validator("verdict.v1").validate(verdict)
    assert (verdict["post_id"], verdict["model_id"]) == ("dog.png", "tiny-blip@1")
    assert verdict["verdict"] in ("match", "mismatch")


def test_score_input_file_gives_one_verdict_per_event(tiny_bundle: Path, tmp_path: Path) -> None:
    """`score --input` prints a verdict per event, errors included, and reports id-less lines."""
    lines = [
        post_event(f"p{i}", "a red circle", shape_image("red", "circle", seed=i)) for i in range(5)
    ]
    lines += [post_event("broken", "a red circle", b"not an image"), b"{not json"]
    posts = tmp_path / "posts.jsonl"
    posts.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(
        main, ["score", "--bundle", str(tiny_bundle), "--max-batch", "2", "--input", str(posts)]
    )
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["post_id"] for v in verdicts] == ["p0", "p1", "p2", "p3", "p4", "broken"]
    assert verdicts[-1]["error_code"] == "image_decode_failed"
    assert "line 7: invalid_json" in result.stderr


def test_bad_setting_exits_2_naming_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bad flag value stops the command with a usage error naming the setting."""
    result = CliRunner().invoke(
        main, ["score", "--bundle", str(tiny_bundle), "--threshold", "2", "--input", "-"]
    )
    assert result.exit_code == 2
    assert "ITMGUARD_THRESHOLD='2'" in result.output


def test_missing_bundle_setting_is_refused() -> None:
    """Scoring without a bundle says the bundle setting is required."""
    result = CliRunner().invoke(main, ["score", "--input", "-"], env={"ITMGUARD_BUNDLE": None})
    assert result.exit_code == 2
    assert "ITMGUARD_BUNDLE" in result.output and "required" in result.output


def test_tampered_bundle_is_refused_with_its_reason(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bundle whose model.onnx changed after export fails with the hash mismatch."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with (bundle / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    image = tmp_path / "x.png"
    image.write_bytes(shape_image("red", "circle"))
    result = CliRunner().invoke(main, ["score", "--bundle", str(bundle), str(image), "a cat"])
    assert result.exit_code == 1
    assert "sha256" in result.output and "bundle.json expects" in result.output


def test_export_command_writes_a_loadable_bundle(tmp_path: Path) -> None:
    """`export blip` turns a checkpoint directory into a bundle the worker accepts."""
    from export.tiny import make_tiny_checkpoint
    from worker.bundle import load_bundle

    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", seed=3)
    result = CliRunner().invoke(
        main,
        [
            "export",
            "blip",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "b"),
            "--name",
            "cli-test",
            "--version",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_id"] == "cli-test@7"
    assert load_bundle(tmp_path / "b").spec.model_id == "cli-test@7"


def test_without_onnxruntime_the_message_names_the_extra() -> None:
    """Importing the scorer with no onnxruntime installed says which extra to install."""
    code = "import sys; sys.modules['onnxruntime'] = None; import worker.scoring"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "itmguard[cpu]" in result.stderr and "itmguard[gpu]" in result.stderr


def test_front_door_exports_are_sorted_and_real() -> None:
    """worker.__all__ is sorted and every name in it exists."""
    import worker

    assert worker.__all__ == sorted(worker.__all__)
    assert all(hasattr(worker, name) for name in worker.__all__)
