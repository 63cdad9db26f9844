"""The model bundle: the contract between the export step and the worker.

A bundle is a directory holding `model.onnx`, `tokenizer.json` and
`bundle.json`. The worker refuses any bundle whose manifest breaks
`schemas/bundle.v1.json` or whose model file does not hash to the recorded
sha256, so a half-copied or hand-edited bundle never scores a post.

A bundle may also carry the same model as two graphs (`graphs` in bundle.json):
an image encoder (`image.onnx`: pixel values to the image's encoding) and a
text-and-match head (`text.onnx`: token ids, attention mask and the image's
encoding to the match probability). Explanations score many captions against
one picture, and with the two graphs encode it once; the files are hashed and
checked as model.onnx is.
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
    "SplitGraphs",
    "file_sha256",
    "load_bundle",
    "write_manifest",
]

BUNDLE_FILES = ("model.onnx", "tokenizer.json", "bundle.json")


@dataclass(frozen=True)
class SplitGraphs:
    """bundle.json's `graphs`: the model as an image encoder and a text-and-match head.

    `encoding` names the image graph's outputs, which the text graph takes as inputs
    under the same names (beside the bundle's `input_ids` and `attention_mask`).
    """

    image_file: str
    image_sha256: str
    text_file: str
    text_sha256: str
    encoding: tuple[str, ...]

    @classmethod
    def from_fields(cls, graphs: dict[str, Any]) -> SplitGraphs:
        return cls(
            image_file=graphs["image"]["file"],
            image_sha256=graphs["image"]["sha256"],
            text_file=graphs["text"]["file"],
            text_sha256=graphs["text"]["sha256"],
            encoding=tuple(graphs["encoding"]),
        )


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
    graphs: SplitGraphs | None = None

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
            graphs=SplitGraphs.from_fields(manifest["graphs"]) if "graphs" in manifest else None,
        )


@dataclass(frozen=True)
class Bundle:
    """A checked bundle on disk."""

    path: Path
    spec: BundleSpec

    @property
    def model_path(self) -> Path:
        return self.path / "model.onnx"

    @property
    def split_paths(self) -> tuple[Path, Path] | None:
        """The image and text graphs' files, when the bundle carries the two-graph form."""
        graphs = self.spec.graphs
        if graphs is None:
            return None
        return self.path / graphs.image_file, self.path / graphs.text_file

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
        BundleFieldError: also when a graph of the two-graph form is not the file
            bundle.json describes.
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
    if spec.graphs is not None:
        _check_split(root, spec.graphs)
    return Bundle(path=root, spec=spec)


def _check_split(root: Path, graphs: SplitGraphs) -> None:
    """The two graphs' files are there and are the ones bundle.json describes."""
    shown = str(root)
    for name, expected in (
        (graphs.image_file, graphs.image_sha256),
        (graphs.text_file, graphs.text_sha256),
    ):
        if not (root / name).is_file():
            raise BundleFileMissing(shown, f"missing {name}, which bundle.json's graphs name")
        actual = file_sha256(root / name)
        if actual != expected:
            raise BundleFieldError(
                shown,
                f"{name} sha256 is {actual} but bundle.json's graphs expect {expected}; "
                "the file was changed or replaced after export",
            )


def write_manifest(path: Path, manifest: dict[str, Any]) -> BundleSpec:
    """Record model.onnx's hash (and the two graphs', when `manifest` names them) in
    `manifest`, check it, and write bundle.json."""
    manifest = {**manifest, "model_sha256": file_sha256(path / "model.onnx")}
    if "graphs" in manifest:
        graphs = dict(manifest["graphs"])
        for part in ("image", "text"):
            graphs[part] = {**graphs[part], "sha256": file_sha256(path / graphs[part]["file"])}
        manifest["graphs"] = graphs
    spec = BundleSpec.from_manifest(manifest, str(path))
    (path / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return spec
