"""Pictures and captions into model inputs, as both export and worker build them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from worker.config import FetchLimits
from worker.images import decode_image, decode_size
from worker.messages import load_schema
from worker.preprocess import ImageSpec, TextEncoder, TextSpec, preprocess_images
from worker.testing import shape_image

SCHEMA_RESAMPLE = load_schema("bundle.v1")["properties"]["image"]["properties"]["resample"]["enum"]
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB = {
    token: i
    for i, token in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "circle", "two", "blue", "squares", "!"]
    )
}


def _spec(height: int = 24, width: int = 40, resample: str = "bicubic") -> ImageSpec:
    return ImageSpec(
        height=height, width=width, resample=resample, rescale_factor=1 / 255, mean=MEAN, std=STD
    )


def _tokenizer() -> Tokenizer:
    """A BERT-style WordPiece tokenizer that wraps each caption in [CLS] ... [SEP]."""
    tokenizer = Tokenizer(WordPiece(VOCAB, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def _encoder(max_tokens: int = 16) -> TextEncoder:
    return TextEncoder(_tokenizer(), TextSpec(max_tokens=max_tokens, pad_token="[PAD]", pad_id=0))


def test_images_of_any_size_stack_to_the_spec_shape() -> None:
    """Pictures of different sizes become one float32 array (N, 3, height, width)."""
    images = [Image.new("RGB", size) for size in [(7, 300), (640, 480), (40, 24)]]
    pixels = preprocess_images(images, _spec(height=24, width=40))
    assert pixels.shape == (3, 3, 24, 40)
    assert pixels.dtype == np.float32


def test_no_images_give_an_empty_batch() -> None:
    """An empty list gives an empty batch of the right shape, not an error."""
    assert preprocess_images([], _spec()).shape == (0, 3, 24, 40)


def test_a_constant_image_normalises_per_channel() -> None:
    """Each channel of a constant picture equals (value/255 - mean) / std for that channel."""
    colour = (10, 120, 250)
    pixels = preprocess_images([Image.new("RGB", (50, 30), colour)], _spec())
    for channel, value in enumerate(colour):
        expected = (value / 255 - MEAN[channel]) / STD[channel]
        np.testing.assert_allclose(pixels[0, channel], expected, rtol=0, atol=1e-6)


def test_resize_uses_the_named_filter_and_keeps_orientation() -> None:
    """Nearest-neighbour upscaling copies each source pixel into its block, rows as rows."""
    source = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    spec = ImageSpec(
        height=4, width=4, resample="nearest", rescale_factor=1.0, mean=(0, 0, 0), std=(1, 1, 1)
    )
    pixels = preprocess_images([Image.fromarray(source)], spec)
    expected = source.repeat(2, axis=0).repeat(2, axis=1).transpose(2, 0, 1)
    np.testing.assert_array_equal(pixels[0], expected)


def test_captions_pad_to_the_longest_with_a_mask() -> None:
    """A batch pads to its longest caption with pad_id, and the mask marks real tokens only."""
    ids, mask = _encoder().encode(["a red circle", "two blue squares!"])
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, [[2, 4, 5, 6, 3, 0], [2, 7, 8, 9, 10, 3]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])


def test_long_captions_truncate_to_max_tokens_keeping_sep() -> None:
    """A caption longer than max_tokens is cut to max_tokens, special tokens included."""
    ids, mask = _encoder(max_tokens=6).encode(["a red circle " * 10, "a"])
    assert ids.shape == (2, 6)
    assert ids[0, 0] == VOCAB["[CLS]"] and ids[0, -1] == VOCAB["[SEP]"]
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 0, 0, 0])


def test_unknown_words_map_to_unk() -> None:
    """Words outside the vocabulary become [UNK], lowercased first."""
    ids, _ = _encoder().encode(["A RED zebra"])
    np.testing.assert_array_equal(ids[0], [2, 4, 5, 1, 3])


def test_the_bundle_spec_overrides_tokenizer_json_settings(tmp_path: Path) -> None:
    """Padding and truncation saved in tokenizer.json give way to the bundle's text spec."""
    tokenizer = _tokenizer()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    tokenizer.enable_truncation(max_length=100)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    spec = TextSpec(max_tokens=4, pad_token="[PAD]", pad_id=0)
    encoder = TextEncoder.from_file(tmp_path / "tokenizer.json", spec)
    ids, _ = encoder.encode(["a", "two blue squares"])
    np.testing.assert_array_equal(ids, [[2, 4, 3, 0], [2, 7, 8, 3]])


@pytest.mark.parametrize("resample", SCHEMA_RESAMPLE)
def test_every_schema_resample_name_is_known(resample: str) -> None:
    """Every filter name bundle.json may hold is one preprocess_images can apply."""
    pixels = preprocess_images([Image.new("RGB", (9, 5), (1, 2, 3))], _spec(resample=resample))
    assert np.isfinite(pixels).all()


PARITY_MEAN = 0.005
"""Largest mean |difference| allowed, in normalised units (about 0.35 grey levels)."""
PARITY_MAX = 0.15
"""Largest single |difference| allowed, in normalised units (about 10 grey levels)."""


def _photo(name: str, size: tuple[int, int], orientation: int | None) -> bytes:
    from skimage import data as photos

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    out = io.BytesIO()
    photo = Image.fromarray(getattr(photos, name)()).convert("RGB")
    photo.resize(size, Image.Resampling.BICUBIC).save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("orientation", [None, 6, 8])
@pytest.mark.parametrize("size", [(1920, 1080), (2448, 1632)], ids=["1080p", "4mp"])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_reduced_decode_gives_the_model_input_of_a_full_decode(
    name: str, size: tuple[int, int], orientation: int | None
) -> None:
    """A real photo decoded at reduced scale gives model inputs within a mean |difference| of
    0.005 and a largest of 0.15 normalised units of a full decode's (measured: at most
    0.0034 and 0.10 over these photos, 224 and 384 inputs)."""
    data = _photo(name, size, orientation)
    full = decode_image(data, FetchLimits())
    for side in (224, 384):
        spec = ImageSpec(
            height=side,
            width=side,
            resample="bicubic",
            rescale_factor=1 / 255,
            mean=MEAN,
            std=STD,
        )
        cheap = decode_image(data, FetchLimits(), min_size=decode_size((side, side)))
        assert cheap.width >= min(2 * side, full.width)
        assert cheap.height >= min(2 * side, full.height)
        diff = np.abs(preprocess_images([full], spec) - preprocess_images([cheap], spec))
        assert float(diff.mean()) <= PARITY_MEAN
        assert float(diff.max()) <= PARITY_MAX


def test_min_length_pads_a_short_batch_further() -> None:
    """A batch shorter than min_length pads to min_length with pad_id and a zero mask."""
    encoder = TextEncoder(
        _tokenizer(), TextSpec(max_tokens=16, pad_token="[PAD]", pad_id=0), min_length=8
    )
    ids, mask = encoder.encode(["a red circle"])
    np.testing.assert_array_equal(ids, [[2, 4, 5, 6, 3, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 0, 0, 0]])
    assert encoder.encode(["a " * 20])[0].shape == (1, 16)


def test_pad_to_max_pads_every_batch_to_max_tokens() -> None:
    """With pad_to_max every batch is max_tokens long, the real tokens unchanged."""
    encoder = TextEncoder(
        _tokenizer(), TextSpec(max_tokens=10, pad_token="[PAD]", pad_id=0), pad_to_max=True
    )
    ids, mask = encoder.encode(["a red circle", "a"])
    assert ids.shape == mask.shape == (2, 10)
    np.testing.assert_array_equal(ids[0, :6], [2, 4, 5, 6, 3, 0])


def test_padding_to_the_longest_scores_as_padding_to_max(tiny_bundle: Path) -> None:
    """The tiny exported model gives the same probabilities, within 1e-6, whether captions
    pad to the batch's longest or to max_tokens: the attention mask hides the padding."""
    from worker.bundle import load_bundle
    from worker.scoring import OnnxScorer

    bundle = load_bundle(tiny_bundle)
    scorer = OnnxScorer(bundle, providers=("cpu",))
    images = [
        Image.open(io.BytesIO(shape_image(c, s, seed=i)))
        for i, (c, s) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle")])
    ]
    captions = ["a red circle", "a blue square on a light background, drawn small", "x"]
    longest = scorer.score(images, captions)
    assert scorer._text.encode(captions)[0].shape[1] < bundle.spec.text.max_tokens
    scorer._text = TextEncoder.from_file(
        bundle.path / "tokenizer.json", bundle.spec.text, pad_to_max=True
    )
    padded = scorer.score(images, captions)
    assert scorer._text.encode(captions)[0].shape[1] == bundle.spec.text.max_tokens
    np.testing.assert_allclose(longest, padded, rtol=0, atol=1e-6)
