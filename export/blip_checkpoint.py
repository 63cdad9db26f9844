"""Where a BLIP checkpoint comes from, and whether it is one: a local directory, or a hub id
fetched where the hub can be reached; refused early, with a message, when it is not a
`BlipForImageTextRetrieval` checkpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from worker.errors import ExportError

__all__ = ["ARCHITECTURE", "check_checkpoint", "default_name", "resolve_checkpoint"]

ARCHITECTURE = "BlipForImageTextRetrieval"

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_HUB_TIMEOUT_S = 10.0


def resolve_checkpoint(checkpoint: Path | str, progress: Callable[[str], None]) -> Path:
    """A local checkpoint directory: `checkpoint` itself, or a hub id's downloaded snapshot.

    Raises:
        ExportError: a hub id the hub cannot serve here; the message says to pass a
            local directory instead. Downloads time out rather than hang.
    """
    path = Path(checkpoint)
    if path.exists() or not _HUB_ID.fullmatch(str(checkpoint)):
        return path
    progress(f"load: {checkpoint} is not a local directory; fetching it from the Hugging Face hub")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(checkpoint), etag_timeout=_HUB_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - hub, network and auth errors all end the same way
        raise ExportError(
            str(checkpoint),
            f"not a local directory, and the Hugging Face hub could not provide it "
            f"({type(exc).__name__}: {str(exc)[:200]}); on a machine without hub access, "
            "download the checkpoint elsewhere and pass its directory",
        ) from None


def default_name(checkpoint: Path | str) -> str:
    raw = Path(checkpoint).resolve().name if Path(checkpoint).exists() else str(checkpoint)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw.rsplit("/", 1)[-1])


def check_checkpoint(checkpoint: Path, shown: str) -> None:
    if not checkpoint.is_dir():
        raise ExportError(shown, "no such checkpoint directory")
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(shown, "no config.json; not a Hugging Face checkpoint") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(shown, f"config.json is not JSON ({exc})") from None
    if not isinstance(config, dict):
        config = {}
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != "blip" or ARCHITECTURE not in architectures:
        raise ExportError(
            shown,
            f"not a BLIP image-text-matching checkpoint: model_type {model_type!r}, "
            f"architectures {architectures}; export needs {ARCHITECTURE}",
        )
