"""The model bundle: the contract between the export step and the worker.

A bundle is a directory holding `model.onnx`, `tokenizer.json` and
`bundle.json`. The worker refuses any bundle whose manifest breaks
`schemas/bundle.v1.json` or whose model file does not hash to the recorded
sha256, so a half-copied or hand-edited bundle never scores a post.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import BundleFieldError, BundleFileMissing, BundleHashMismatch
from worker.messages import validator
from worker.preprocess import ImageSpec, TextEncoder, TextSpec

__all__ = [
    "BUNDLE_FILES",
    "Bundle",
    "BundleSpec",
    "file_sha256",
    "load_bundle",
    "write_manifest",
]

BUNDLE_FILES = ("model.onnx", "tokenizer.json", "bundle.json")


@dataclass(frozen=True)
class BundleSpec:
    """bundle.json, checked, as typed fields; `raw` keeps every field for reports."""

    name: str
    version: str
    architecture: str
    input_names: dict[str, str]
    output_name: str
    image: ImageSpec
    text: TextSpec
    threshold: float
    model_sha256: str
    raw: dict[str, Any]

    @property
    def model_id(self) -> str:
        """`name@version`: what verdicts record, so two model versions can coexist."""
        return f"{self.name}@{self.version}"

    @property
    def tensorrt_profile(self) -> dict[str, list[int]] | None:
        """The TensorRT shape profile, `batch` and `sequence` as [min, opt, max], if any."""
        profile: dict[str, list[int]] | None = self.raw.get("tensorrt", {}).get("profile")
        return profile

    @classmethod
    def from_manifest(cls, manifest: Any, path: str) -> BundleSpec:
        """Check `manifest` against the bundle schema and type it.

        Raises:
            BundleFieldError: a field is missing or has a bad value; the message names it.
        """
        errors = sorted(validator("bundle.v1").iter_errors(manifest), key=lambda e: e.path)
        if errors:
            details = "; ".join(
                f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
                for e in errors[:5]
            )
            raise BundleFieldError(path, f"bundle.json is not valid: {details}")
        image = manifest["image"]
        text = manifest["text"]
        return cls(
            name=manifest["name"],
            version=manifest["version"],
            architecture=manifest["architecture"],
            input_names={role: t["name"] for role, t in manifest["inputs"].items()},
            output_name=manifest["output"]["name"],
            image=ImageSpec.from_fields(image),
            text=TextSpec(
                max_tokens=text["max_tokens"], pad_token=text["pad_token"], pad_id=text["pad_id"]
            ),
            threshold=float(manifest["threshold"]),
            model_sha256=manifest["model_sha256"],
            raw=manifest,
        )


@dataclass(frozen=True)
class Bundle:
    """A checked bundle on disk."""

    path: Path
    spec: BundleSpec

    @property
    def model_path(self) -> Path:
        return self.path / "model.onnx"

    def text_encoder(self) -> TextEncoder:
        """The bundle's tokenizer; captions pad to the batch's longest, but never below the
        TensorRT profile's shortest sequence, which its engine cannot take."""
        profile = self.spec.tensorrt_profile
        shortest = profile["sequence"][0] if profile else 1
        return TextEncoder.from_file(
            self.path / "tokenizer.json", self.spec.text, min_length=shortest
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: Path | str) -> Bundle:
    """Open and check the bundle at `path`.

    Raises:
        BundleFileMissing: a bundle file is absent.
        BundleFieldError: bundle.json is not JSON or breaks the bundle schema.
        BundleHashMismatch: model.onnx is not the file bundle.json describes.
    """
    root = Path(path)
    shown = str(root)
    if not root.is_dir():
        raise BundleFileMissing(shown, "is not a directory")
    missing = [name for name in BUNDLE_FILES if not (root / name).is_file()]
    if missing:
        raise BundleFileMissing(shown, f"missing {', '.join(missing)}")
    try:
        manifest = json.loads((root / "bundle.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFieldError(shown, f"bundle.json is not JSON: {exc}") from None
    spec = BundleSpec.from_manifest(manifest, shown)
    actual = file_sha256(root / "model.onnx")
    if actual != spec.model_sha256:
        raise BundleHashMismatch(shown, expected=spec.model_sha256, actual=actual)
    return Bundle(path=root, spec=spec)


def write_manifest(path: Path, manifest: dict[str, Any]) -> BundleSpec:
    """Record model.onnx's hash in `manifest`, check it, and write bundle.json."""
    manifest = {**manifest, "model_sha256": file_sha256(path / "model.onnx")}
    spec = BundleSpec.from_manifest(manifest, str(path))
    (path / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return spec
