"""Pictures and captions into model inputs, as both export and worker build them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from worker.messages import load_schema
from worker.preprocess import ImageSpec, TextEncoder, TextSpec, preprocess_images

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
