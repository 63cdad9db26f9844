"""A tiny, randomly initialised BLIP image-text-matching checkpoint.

No pretrained vision-language weights can be downloaded on the machines that
build and test itmguard, so tests (and the training step that makes a tiny
model whose scores mean something) start from this checkpoint: the real
`BlipForImageTextRetrieval` architecture and the real `BlipProcessor`, at a
size that exports and scores in seconds on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
)

__all__ = ["SPECIAL_TOKENS", "WORDS", "make_tiny_checkpoint", "tiny_vocab"]

_MAX_TOKENS = 64

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Caption vocabulary: what generated pictures show (shapes, colours, counts,
# positions, sizes, animals, everyday objects) and the words that join them.
_WORD_LIST = """
    a an the one two three four five six seven eight nine ten many several some
    no none single pair couple few dozen both each every all other another
    circle circles square squares triangle triangles rectangle rectangles star
    stars ellipse ellipses oval ovals dot dots line lines stripe stripes cross
    crosses ring rings diamond diamonds hexagon hexagons heart hearts arrow
    arrows shape shapes polygon polygons disc discs box boxes cube cubes
    red green blue yellow orange purple pink brown black white gray grey cyan
    magenta violet gold silver dark light bright pale colorful colourful
    left right top bottom middle center centre corner corners edge edges above
    below under over beside next near far behind front inside outside between
    around across along against upper lower side sides
    big small large tiny huge little tall short wide narrow long thick thin
    round flat striped dotted plain empty full solid hollow
    cat cats dog dogs bird birds fish horse horses cow cows sheep pig pigs
    rabbit rabbits mouse mice duck ducks chicken lion tiger bear bears
    elephant giraffe zebra monkey frog snake turtle animal animals
    cup cups mug plate bowl spoon fork knife bottle glass chair chairs table
    tables bed lamp clock book books phone car cars bus bike bicycle truck
    boat train plane house houses tree trees flower flowers ball balls hat
    shoe shoes bag key door window sign road street sky sun moon cloud
    clouds grass water beach mountain field room kitchen pizza cake apple
    apples banana bananas orange sandwich computer laptop keyboard television
    umbrella kite person people man woman child boy girl
    is are was be has have with without and or of on in at to by for from
    this that these those there here it its their his her
    picture image photo drawing background foreground scene view
    sitting standing lying walking running flying swimming holding eating
    on top filled outlined drawn shown made
    nothing something only just also very not
"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORD_LIST.split()))


def tiny_vocab() -> dict[str, int]:
    """Token → id: special tokens first ([PAD]=0), then words, letters, digits, punctuation.

    Single letters and digits, bare and as `##` continuations, let WordPiece
    spell any out-of-vocabulary word instead of collapsing it to [UNK].
    """
    pieces = list(SPECIAL_TOKENS)
    pieces += WORDS
    characters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
    pieces += [c for c in characters if c not in pieces]
    pieces += [f"##{c}" for c in characters]
    pieces += list(".,;:!?'\"-()&/")
    return {piece: i for i, piece in enumerate(pieces)}


def make_tiny_checkpoint(
    out_dir: Path,
    *,
    seed: int = 0,
    image_size: int = 64,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    patch_size: int = 16,
) -> Path:
    """Write a tiny random `BlipForImageTextRetrieval` checkpoint with its processor.

    The same arguments give the same weights, so tests can compare runs. The
    defaults make the smallest model that exports; training on generated
    shapes (`export.train_tiny`) asks for a wider one with smaller patches.

    Args:
        out_dir: directory to write; created if absent.
        seed: torch seed for the random weights.
        image_size: height and width, in pixels, that the processor resizes to.
        hidden_size: width of the vision and text transformers.
        num_layers: layers in each of the vision and text transformers.
        num_heads: attention heads per layer; must divide `hidden_size`.
        patch_size: side, in pixels, of the square image patches the vision model sees.

    Returns:
        `out_dir`, ready for `from_pretrained`.
    """
    vocab = tiny_vocab()
    tokenizer = BertTokenizer(vocab=vocab, model_max_length=_MAX_TOKENS)
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor, tokenizer=tokenizer
    )
    # Weights start at 1/sqrt(hidden size). BLIP's defaults (0.02, and 1e-10 for
    # the vision embeddings) suit hidden size 768; at 64 they shrink every layer's
    # output, and the random model scores every pair within 0.01 of the same value.
    init_std = hidden_size**-0.5
    config = BlipConfig(
        vision_config={
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "patch_size": patch_size,
            "image_size": image_size,
            "initializer_range": init_std,
        },
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": hidden_size,
            "encoder_hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "max_position_embeddings": _MAX_TOKENS,
            "pad_token_id": vocab["[PAD]"],
            "bos_token_id": vocab["[CLS]"],
            "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"],
            "initializer_range": init_std,
        },
        projection_dim=32,
        image_text_hidden_size=32,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
