"""One row of the settings table: an ITMGUARD_* variable, the Settings attribute it fills, its
parser, and the flag made from it (`worker.options`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SettingSpec"]


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its env variable, the Settings attribute it fills, its parser."""

    env: str
    attr: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    env_only: bool = False
    """No flag: the value would show in `ps`; it comes from the environment alone."""

    @property
    def flag(self) -> str:
        return "--" + self.env.removeprefix("ITMGUARD_").lower().replace("_", "-")
