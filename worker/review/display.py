"""How user text and scores are shown to moderators, on the web page and in a terminal alike.

A caption is whatever a poster typed, and what a moderator sees must be what
is there: a right-to-left override turns "Free prize \\u202etxt.exe" into
"Free prize exe.txt" on screen, and zero-width characters hide inside words.
`hidden_characters` finds every such character so the page can mark it
instead of obeying it. Scores near zero keep enough digits to be told apart.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "CAPTION_PREVIEW_CHARS",
    "character_name",
    "contradicted_runs",
    "hidden_characters",
    "score_text",
]

CAPTION_PREVIEW_CHARS = 280
"""Characters of a caption shown before the rest is folded away behind an expander."""

_INVISIBLE_LETTERS = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0})
"""Hangul fillers: letters by category, blank on screen."""


def _hidden(char: str) -> bool:
    if char in "\n\t":
        return False
    category = unicodedata.category(char)
    return category in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") or ord(char) in _INVISIBLE_LETTERS


def hidden_characters(text: str) -> Iterator[tuple[bool, str]]:
    """`text` in runs: (False, shown as it is) and (True, one character to mark, not obey)."""
    run: list[str] = []
    for char in text:
        if _hidden(char):
            if run:
                yield False, "".join(run)
                run = []
            yield True, char
        else:
            run.append(char)
    if run:
        yield False, "".join(run)


def character_name(char: str) -> str:
    """`U+202E` and its Unicode name, for a marked character's label and tooltip."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'unnamed')}"


def score_text(value: float) -> str:
    """Three decimals, or three significant digits below 0.001, so 0.0001 never reads as 0."""
    if value == 0 or abs(value) >= 0.001:
        return f"{value:.3f}"
    return f"{value:.2e}"


def contradicted_runs(
    text: str, explanation: Mapping[str, Any] | None
) -> Iterator[tuple[bool, str]]:
    """`text` in runs: (True, words the image contradicts) and (False, the rest), from an
    explanation's `culprits` (`worker.explain`). Spans past the end of `text` (a cut
    preview) are cut with it; overlapping or malformed ones are skipped."""
    spans = sorted(
        (int(c["start"]), min(int(c["end"]), len(text)))
        for c in (explanation or {}).get("culprits", [])
        if isinstance(c, Mapping)
        and isinstance(c.get("start"), int)
        and isinstance(c.get("end"), int)
    )
    at = 0
    for start, end in spans:
        if start < at or start >= end:
            continue
        if start > at:
            yield False, text[at:start]
        yield True, text[start:end]
        at = end
    if at < len(text):
        yield False, text[at:]
