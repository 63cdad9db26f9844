"""BLIP's image-text matcher as torch modules to trace: the one graph, and its two halves.

The halves are the vision encoder, and the text encoder with the ITM head, which
cross-attends to the vision encoder's output. `BlipForImageTextRetrieval` with
`use_itm_head=True` runs exactly these two in sequence (every image token attended
to), so the two graphs compose to the one graph's probability; `export.split`
checks that they do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BlipForImageTextRetrieval

from export.parity import Feeds
from export.split import trace_split

__all__ = ["ENCODING", "BlipImage", "BlipText", "MatchProbability", "trace_blip_split"]

ENCODING = ("image_embeds",)
"""The image graph's one output: the vision encoder's last hidden state, (batch, tokens,
hidden)."""


class MatchProbability(torch.nn.Module):
    """BLIP's ITM head as one probability per pair: softmax(itm_score)[:, 1]."""

    def __init__(self, model: BlipForImageTextRetrieval) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Probability that each image matches its caption, float32 of shape (batch,)."""
        output = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            use_itm_head=True,
        )
        return torch.softmax(output.itm_score, dim=-1)[:, 1]


class BlipImage(torch.nn.Module):
    """Pixels to BLIP's image embeddings."""

    def __init__(self, model: BlipForImageTextRetrieval) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeds: torch.Tensor = self.model.vision_model(pixel_values=pixel_values).last_hidden_state
        return embeds


class BlipText(torch.nn.Module):
    """Captions against image embeddings: softmax of the ITM head's scores, class 1."""

    def __init__(self, model: BlipForImageTextRetrieval) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor
    ) -> torch.Tensor:
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
        states = self.model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        ).last_hidden_state
        return torch.softmax(self.model.itm_head(states[:, 0, :]), dim=-1)[:, 1]


def trace_blip_split(
    shown: str,
    model: BlipForImageTextRetrieval,
    example: Feeds,
    work: Path,
    opset: int,
    progress: Callable[[str], None],
) -> None:
    """Trace `model`'s two halves into `work` (`export.split.trace_split`)."""
    trace_split(
        shown,
        BlipImage(model).eval(),
        BlipText(model).eval(),
        ENCODING,
        example,
        work,
        opset,
        progress,
    )
