"""Preprocessing (lesson 5): images into [-1, 1] pixels, text into tokens and masks."""

from __future__ import annotations

import io
import random
import struct
import types
import warnings
import zlib

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from PIL import Image

from solutions.preprocess import (
    BOS_ID,
    EOS_ID,
    MAX_IMAGE_PIXELS,
    PAD_ID,
    TruncationStats,
    TruncationWarning,
    postprocess_tokens,
    preprocess_batch,
    preprocess_image,
    preprocess_tokens,
)

RED, WHITE = (1.0, -1.0, -1.0), (1.0, 1.0, 1.0)
SIZE = 8  # Output side for most image tests: small and fast.


# --------------------------------------------------------------------------- tokenizer


def train_tiny_tokenizer(directory) -> sentencepiece.SentencePieceProcessor:
    """Trains an 80-piece SentencePiece model with PaliGemma's id layout.

    Like PaliGemma's (Gemma's) tokenizer: pad 0, eos 1, bos 2, unk 3; "\\n" is
    a single piece; no normalization and no dummy "▁" before the text, so
    `encode(prefix) + encode("\\n")` equals `encode(prefix + "\\n")`.
    """
    rng = random.Random(0)
    colours = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple", "grey"]
    things = ["circle", "square", "triangle", "star", "house", "tree", "cloud", "river", "boat"]
    places = ["on a", "next to a", "under a", "above a", "behind a", "inside a"]

    def sentence() -> str:
        return (
            f"a {rng.choice(colours)} {rng.choice(things)} {rng.choice(places)} "
            f"{rng.choice(colours)} {rng.choice(things)}, seen from {rng.randint(2, 99)} meters."
        )

    sentences = [sentence() for _ in range(400)] + ["caption en", "answer en what is this?"] * 5
    prefix = str(directory / "tiny")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=prefix,
        vocab_size=80,
        model_type="unigram",
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=3,
        user_defined_symbols=["\n"],
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return sentencepiece.SentencePieceProcessor(model_file=prefix + ".model")


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_tiny_tokenizer_has_paligemma_layout(tokenizer):
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    assert len(tokenizer.encode("\n")) == 1
    assert tokenizer.encode("caption en") + tokenizer.encode("\n") == tokenizer.encode(
        "caption en\n"
    )


# --------------------------------------------------------------------------- tokens


def test_mask_layout_worked_example(tokenizer):
    prefix_ids = tokenizer.encode("caption en")
    suffix_ids = tokenizer.encode("a red star")
    newline = tokenizer.encode("\n")
    n_prompt = 1 + len(prefix_ids) + 1  # bos, prefix, "\n"
    n_target = len(suffix_ids) + 1  # caption, eos
    seqlen = n_prompt + n_target + 3

    tokens, mask_ar, mask_loss, mask_input = preprocess_tokens(
        "caption en", "a red star", seqlen, tokenizer=tokenizer
    )

    expected_tokens = [BOS_ID, *prefix_ids, *newline, *suffix_ids, EOS_ID, PAD_ID, PAD_ID, PAD_ID]
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(mask_ar, [0] * n_prompt + [1] * n_target + [0, 0, 0])
    np.testing.assert_array_equal(mask_loss, [0] * n_prompt + [1] * n_target + [0, 0, 0])
    np.testing.assert_array_equal(mask_input, [1] * (n_prompt + n_target) + [0, 0, 0])
    for array in (tokens, mask_ar, mask_loss, mask_input):
        assert array.dtype == np.int32 and array.shape == (seqlen,)
    pieces = [tokenizer.id_to_piece(int(t)) for t in tokens]
    assert pieces[0] == "<s>" and pieces[n_prompt - 1] == "\n"
    assert pieces[n_prompt + n_target - 1 :] == ["</s>", "<pad>", "<pad>", "<pad>"]


def test_without_seqlen_keeps_natural_length(tokenizer):
    tokens, mask_ar, _, mask_input = preprocess_tokens(
        "caption en", "a red star", tokenizer=tokenizer
    )
    natural = 2 + len(tokenizer.encode("caption en")) + len(tokenizer.encode("a red star")) + 1
    assert tokens.shape == mask_ar.shape == (natural,)
    assert mask_input.tolist() == [1] * natural
    assert tokens[-1] == EOS_ID


def test_prompt_only_for_decoding_is_padded_prefix(tokenizer):
    tokens, mask_ar, mask_loss, mask_input = preprocess_tokens(
        "caption en", tokenizer=tokenizer, seqlen=20
    )
    n_prompt = 2 + len(tokenizer.encode("caption en"))
    assert tokens[:n_prompt].tolist() == [BOS_ID, *tokenizer.encode("caption en\n")]
    assert not tokens[n_prompt:].any() and EOS_ID not in tokens.tolist()
    assert not mask_ar.any() and not mask_loss.any()
    assert mask_input.tolist() == [1] * n_prompt + [0] * (20 - n_prompt)


def test_truncation_is_warned_and_counted(tokenizer):
    caption = "a purple triangle behind a grey cloud, seen from 42 meters."
    full = preprocess_tokens("caption en", caption, tokenizer=tokenizer)
    seqlen = len(full[0]) - 5
    stats = TruncationStats()

    with pytest.warns(TruncationWarning, match=r"5 of its \d+ tokens"):
        cut = preprocess_tokens("caption en", caption, seqlen, tokenizer=tokenizer, stats=stats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # A caption that fits must not warn.
        preprocess_tokens("caption en", "a red star", seqlen, tokenizer=tokenizer, stats=stats)

    for kept, whole in zip(cut, full, strict=True):  # The end is cut, nothing else changes.
        np.testing.assert_array_equal(kept, whole[:seqlen])
    assert EOS_ID not in cut[0].tolist()
    assert (stats.captions, stats.truncated, stats.tokens_cut) == (2, 1, 5)
    assert str(stats) == "1 of 2 captions truncated (5 tokens cut)"


def test_prefix_that_fills_seqlen_cuts_the_whole_caption(tokenizer):
    n_prompt = 2 + len(tokenizer.encode("caption en"))
    stats = TruncationStats()
    with pytest.warns(TruncationWarning):
        tokens, mask_ar, _, _ = preprocess_tokens(
            "caption en", "a red star", n_prompt, tokenizer=tokenizer, stats=stats
        )
    assert tokens.shape == (n_prompt,) and not mask_ar.any()
    assert stats.tokens_cut == len(tokenizer.encode("a red star")) + 1


def test_prefix_longer_than_seqlen_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="prefix 'caption en' takes .* seqlen is 3"):
        preprocess_tokens("caption en", "a red star", 3, tokenizer=tokenizer)


def test_missing_or_wrong_tokenizer_is_clear(tokenizer):
    with pytest.raises(TypeError, match="needs tokenizer="):
        preprocess_tokens("caption en", "a red star", 16)
    with pytest.raises(TypeError, match="needs tokenizer="):
        postprocess_tokens([2, 5, 1])
    default_ids = types.SimpleNamespace(pad_id=lambda: -1, eos_id=lambda: 2, bos_id=lambda: 1)
    with pytest.raises(ValueError, match=r"pad/eos/bos ids \(-1, 2, 1\)"):
        preprocess_tokens("caption en", tokenizer=default_ids)


def test_postprocess_round_trip(tokenizer):
    caption = "a blue boat under a white cloud, seen from 7 meters."
    tokens, *_ = preprocess_tokens("caption en", caption, 64, tokenizer=tokenizer)
    assert postprocess_tokens(tokens, tokenizer=tokenizer) == "caption en\n" + caption

    # A decoder's output: the caption, EOS, then whatever it kept producing.
    generated = np.array([*tokenizer.encode(caption), EOS_ID, *tokenizer.encode("red"), PAD_ID])
    assert postprocess_tokens(generated, tokenizer=tokenizer) == caption
    no_eos = np.array([*tokenizer.encode(caption), PAD_ID, PAD_ID], np.int32)
    assert postprocess_tokens(no_eos, tokenizer=tokenizer) == caption
    with pytest.raises(ValueError, match="one sequence"):
        postprocess_tokens(generated[None], tokenizer=tokenizer)


def test_preprocess_batch_stacks_examples(tokenizer):
    examples = [
        {"image": np.zeros((10, 12, 3), np.uint8), "prefix": "caption en", "suffix": "a red star"},
        {"image": np.full((5, 5), 255, np.uint8), "prefix": "caption en"},
    ]
    batch = preprocess_batch(examples, seqlen=24, size=SIZE, tokenizer=tokenizer)
    assert batch["image"].shape == (2, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    np.testing.assert_allclose(batch["image"][0], -1.0)
    np.testing.assert_allclose(batch["image"][1], 1.0, atol=1e-6)
    for name in ("text", "mask_ar", "mask_loss", "mask_input"):
        assert batch[name].shape == (2, 24) and batch[name].dtype == np.int32
    one = preprocess_tokens("caption en", "a red star", 24, tokenizer=tokenizer)
    np.testing.assert_array_equal(batch["mask_ar"][0], one[1])
    assert not batch["mask_loss"][1].any()


# --------------------------------------------------------------------------- images


def _centre(image: np.ndarray) -> np.ndarray:
    return image[SIZE // 2, SIZE // 2]


def _palette_red(mode: str) -> Image.Image:
    image = Image.new(mode, (6, 5))
    image.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red, index 1 blue
    return image


def _palette_red_transparent() -> Image.Image:
    image = _palette_red("P")
    image.info["transparency"] = bytes([0, 255])  # The red entry is fully transparent.
    return image


IMAGES = {
    "RGB": (lambda: Image.new("RGB", (6, 5), (255, 0, 0)), RED),
    "RGBA": (lambda: Image.new("RGBA", (6, 5), (255, 0, 0, 0)), RED),
    "P": (lambda: _palette_red("P"), RED),
    "P+transparency": (_palette_red_transparent, RED),
    "PA": (lambda: _palette_red("PA"), RED),
    "CMYK": (lambda: Image.new("CMYK", (6, 5), (0, 255, 255, 0)), RED),
    "L": (lambda: Image.new("L", (6, 5), 255), WHITE),
    "LA": (lambda: Image.new("LA", (6, 5), (255, 0)), WHITE),
    "1": (lambda: Image.new("1", (6, 5), 1), WHITE),
    "I;16": (lambda: Image.new("I;16", (6, 5), 65535), WHITE),
    "I;16B": (lambda: Image.new("I;16B", (6, 5), 65535), WHITE),
    "I": (lambda: Image.new("I", (6, 5), 65535), WHITE),
    "F": (lambda: Image.new("F", (6, 5), 1.0), WHITE),
}


@pytest.mark.filterwarnings("error")  # Pillow warns on careless palette conversions.
@pytest.mark.parametrize("mode", sorted(IMAGES))
def test_every_mode_gives_rgb_in_range_with_the_right_colour(mode):
    make, colour = IMAGES[mode]
    out = preprocess_image(make(), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(_centre(out), colour, atol=1e-5)


def test_mid_grey_16_bit_matches_8_bit():
    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, (9, 11), np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # 255 -> 65535: the same picture in 16 bits.
    reference = preprocess_image(eight, SIZE)
    np.testing.assert_allclose(preprocess_image(sixteen, SIZE), reference, atol=1e-5)
    np.testing.assert_allclose(
        preprocess_image(Image.fromarray(sixteen), SIZE), reference, atol=1e-5
    )


@pytest.mark.parametrize(
    "array",
    [
        np.full((5, 7), 255, np.uint8),
        np.full((5, 7, 1), 255, np.uint8),
        np.full((5, 7, 2), 255, np.uint8),
        np.ones((5, 7), bool),
        np.ones((5, 7, 3), np.float64),
        np.full((5, 7, 4), 65535, np.uint16),
        np.full((5, 7, 3), 65535, ">u2"),
    ],
    ids=["HxW", "HxWx1", "HxWx2", "bool", "float", "uint16-RGBA", "uint16-big-endian"],
)
def test_white_arrays_of_every_layout(array):
    out = preprocess_image(array, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-5)


def test_rgba_array_drops_alpha():
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 255  # red, fully transparent
    np.testing.assert_allclose(_centre(preprocess_image(pixels, SIZE)), RED, atol=1e-5)


def test_resize_matches_tensorflow_bilinear_antialias():
    """Downscale and upscale, odd sizes: the same numbers PaliGemma was trained on."""
    rng = np.random.default_rng(0)
    for shape, size in [((37, 53, 3), 16), ((5, 3, 3), 12)]:
        pixels = rng.integers(0, 256, shape, np.uint8)
        reference = tf.image.resize(pixels, (size, size), method="bilinear", antialias=True)
        expected = np.clip(reference.numpy() / 127.5 - 1.0, -1, 1)
        np.testing.assert_allclose(preprocess_image(pixels, size), expected, atol=1e-6)
        np.testing.assert_allclose(
            preprocess_image(Image.fromarray(pixels), size), expected, atol=1e-6
        )


def test_default_size_is_224():
    assert preprocess_image(np.zeros((3, 4, 3), np.uint8)).shape == (224, 224, 3)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _red_left_blue_right(width: int = 40, height: int = 20) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return Image.fromarray(pixels)


def test_exif_orientation_6_turns_the_photo_upright(tmp_path):
    """Orientation 6: the camera was turned, display needs 90° clockwise, so
    the stored left half (red) ends up on top."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    data = _encode(_red_left_blue_right(), "JPEG", exif=exif.tobytes(), quality=95)
    path = tmp_path / "turned.jpg"
    path.write_bytes(data)

    for source in (data, path, str(path), io.BytesIO(data), Image.open(io.BytesIO(data))):
        out = preprocess_image(source, SIZE)
        top, bottom = out[: SIZE // 2 - 1].mean((0, 1)), out[SIZE // 2 + 1 :].mean((0, 1))
        np.testing.assert_allclose(top, RED, atol=0.05)
        np.testing.assert_allclose(bottom, (-1.0, -1.0, 1.0), atol=0.05)


def test_plain_jpeg_keeps_its_orientation():
    out = preprocess_image(_encode(_red_left_blue_right(), "JPEG", quality=95), SIZE)
    np.testing.assert_allclose(out[:, : SIZE // 2 - 1].mean((0, 1)), RED, atol=0.05)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size but stops where its pixel data would start:
    decoding it would fail, so an error about the size proves nothing was decoded."""
    header = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    header_chunk = struct.pack(">I", 13) + header + struct.pack(">I", zlib.crc32(header))
    data_start = struct.pack(">I", 1000) + b"IDAT"  # Announces 1000 bytes, holds none.
    return b"\x89PNG\r\n\x1a\n" + header_chunk + data_start


def test_oversized_image_is_refused_before_decoding():
    width, height = 8_000, 7_000  # 56 M pixels: over the default limit, under Pillow's.
    assert width * height > MAX_IMAGE_PIXELS
    with pytest.raises(
        ValueError, match=r"8000x7000 = 56,000,000 pixels, over the limit of 50,000,000"
    ):
        preprocess_image(_png_header_only(width, height))
    with pytest.raises(ValueError, match=r"20x10 = 200 pixels, over the limit of 199"):
        preprocess_image(_png_header_only(20, 10), max_pixels=199)
    # Past Pillow's own hard limit too.
    with pytest.raises(ValueError, match=r"claims more pixels than Pillow will decode"):
        preprocess_image(_png_header_only(100_000, 100_000))
    with pytest.raises(ValueError, match=r"11 = 110 pixels, over the limit of 100 \(max_pixels\)"):
        preprocess_image(np.zeros((11, 10), np.uint8), max_pixels=100)


def test_non_image_and_damaged_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="20 bytes is not an image"):
        preprocess_image(b"definitely not a png")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        preprocess_image(text_file)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    jpeg = _encode(Image.fromarray(noise), "JPEG", quality=95)
    with pytest.raises(ValueError, match="damaged"):  # Cut inside the pixel data.
        preprocess_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ValueError, match="damaged"):  # Cut inside the headers.
        preprocess_image(jpeg[:200])
    with pytest.raises(FileNotFoundError):
        preprocess_image(tmp_path / "missing.png")


def test_unreadable_values_and_types_are_clear_errors():
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        preprocess_image(np.full((4, 4, 3), 200.0))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        preprocess_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(TypeError, match="dtype int64"):
        preprocess_image(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ValueError, match=r"shape \(4, 4, 5\)"):
        preprocess_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="only 0..65535"):
        preprocess_image(Image.new("I", (4, 4), 70_000))
    with pytest.raises(TypeError, match="cannot read an object of type int"):
        preprocess_image(42)
