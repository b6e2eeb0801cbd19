"""Graded checks for lesson 5 (preprocessing): one test per behaviour, named test_ex5_K_<what>."""

import pathlib
import warnings

import numpy as np
import pytest

from solutions.preprocess import BOS_ID, EOS_ID, PAD_ID, TruncationStats, TruncationWarning
from solutions.tokenizer import load_tokenizer
from tests.grading import expect_close, expect_equal, expect_raises, expect_true

LESSON = 5
SOLUTIONS = ("solutions.preprocess",)
pytestmark = pytest.mark.lesson5

TOKENIZER_PATH = (
    pathlib.Path(__file__).parents[2] / "capstone" / "assets" / "tiny" / "tokenizer.model"
)
PREFIX, CAPTION = "caption en", "a small red star"


def _tokenizer():
    return load_tokenizer(TOKENIZER_PATH)


def _tf_resize(pixels, size):
    """The resize PaliGemma was trained with, straight from TensorFlow."""
    import tensorflow as tf

    return tf.image.resize(pixels, (size, size), method="bilinear", antialias=True).numpy()


# --------------------------------------------------------------------------- 5.1 resize_and_scale


def test_ex5_1_returns_float32_square_image(impl):
    got = impl.resize_and_scale(np.zeros((10, 14, 3), np.uint8), 6)
    expect_equal(
        np.asarray(got).shape,
        (6, 6, 3),
        what="output shape",
        hint="resize to (size, size): a square, whatever the input's aspect ratio",
    )
    expect_equal(
        str(np.asarray(got).dtype),
        "float32",
        what="output dtype",
        hint="finish with .astype(np.float32)",
    )


def test_ex5_1_black_and_white_map_to_minus_one_and_one(impl):
    cases = [
        (np.zeros((5, 7, 3), np.uint8), -1.0, "uint8 black (0)"),
        (np.full((5, 7, 3), 255, np.uint8), 1.0, "uint8 white (255)"),
        (np.full((5, 7, 3), 65535, np.uint16), 1.0, "uint16 white (65535)"),
        (np.full((5, 7, 3), 0.5, np.float32), 0.0, "float32 mid grey (0.5)"),
    ]
    for pixels, value, name in cases:
        got = impl.resize_and_scale(pixels, 4)
        expect_close(
            got,
            np.full((4, 4, 3), value, np.float32),
            what=name,
            atol=1e-5,
            hint="full scale is 255 for uint8, 65535 for uint16, 1.0 for float32; "
            "divide by half of it and subtract 1",
        )


def test_ex5_1_halving_averages_each_two_by_two_block(impl):
    # A 2x2 -> 1x1 bilinear antialiased resize weighs the four pixels equally.
    pixels = np.array([[[0, 40, 200], [100, 80, 0]], [[20, 0, 255], [120, 240, 25]]], np.uint8)
    want = pixels.reshape(4, 3).mean(axis=0) / 127.5 - 1
    got = impl.resize_and_scale(pixels, 1)
    expect_close(
        got,
        want.reshape(1, 1, 3).astype(np.float32),
        what="1x1 from a 2x2 image",
        atol=1e-5,
        hint="use tf.image.resize with method='bilinear', antialias=True",
    )


def test_ex5_1_matches_tensorflow_bilinear_antialias(impl):
    rng = np.random.default_rng(5)
    for shape, size in (((37, 53, 3), 16), ((5, 3, 3), 12)):  # shrink and enlarge, odd sizes
        pixels = rng.integers(0, 256, shape, np.uint8)
        got = impl.resize_and_scale(pixels, size)
        want = np.clip(_tf_resize(pixels, size) / 127.5 - 1, -1, 1)
        expect_close(
            got,
            want,
            what=f"{shape[:2]} resized to {size}",
            atol=1e-5,
            hint="tf.image.resize(pixels, (size, size), method='bilinear', "
            "antialias=True); antialias matters when shrinking",
        )


def test_ex5_1_sixteen_bit_matches_eight_bit(impl):
    eight = np.random.default_rng(1).integers(0, 256, (9, 11, 3), np.uint8)
    sixteen = eight.astype(np.uint16) * 257  # 255 -> 65535: the same picture in 16 bits
    got = impl.resize_and_scale(sixteen, 8)
    want = np.clip(_tf_resize(eight, 8) / 127.5 - 1, -1, 1)
    expect_close(
        got,
        want,
        what="a 16-bit image",
        atol=1e-5,
        hint="for uint16 white is 65535: divide by 32767.5, not 127.5",
    )


def test_ex5_1_never_leaves_minus_one_to_one(impl):
    white = np.full((37, 53, 3), 255, np.uint8)  # the filter's rounding lands a hair above 255
    got = np.asarray(impl.resize_and_scale(white, 16))
    expect_true(
        got.max() <= 1.0 and got.min() >= -1.0,
        what=f"values within [-1, 1] (max was {got.max()!r})",
        hint="np.clip(values, -1.0, 1.0) after scaling",
    )


# --------------------------------------------------------------------------- 5.2 preprocess_tokens


def test_ex5_2_layout_and_masks_with_padding(impl):
    tokenizer = _tokenizer()
    got = impl.preprocess_tokens(PREFIX, CAPTION, 16, tokenizer=tokenizer)
    prompt = [BOS_ID, *tokenizer.encode(PREFIX), *tokenizer.encode("\n")]
    target = [*tokenizer.encode(CAPTION), EOS_ID]
    padding = 16 - len(prompt) - len(target)
    want = {
        "tokens": prompt + target + [PAD_ID] * padding,
        "mask_ar": [0] * len(prompt) + [1] * len(target) + [0] * padding,
        "mask_loss": [0] * len(prompt) + [1] * len(target) + [0] * padding,
        "mask_input": [1] * (len(prompt) + len(target)) + [0] * padding,
    }
    expect_equal(
        len(got),
        4,
        what="number of returned arrays",
        hint="return (tokens, mask_ar, mask_loss, mask_input)",
    )
    hints = {
        "tokens": "[bos] + encode(prefix) + encode('\\n') + encode(suffix) + [eos], then 0s",
        "mask_ar": "0 on the prefix part (bos, prefix, '\\n'), 1 on suffix + eos, 0 on padding",
        "mask_loss": "the loss counts the suffix and its eos only",
        "mask_input": "1 on every real token, 0 on padding",
    }
    for array, (name, values) in zip(got, want.items(), strict=True):
        expect_equal(np.asarray(array), np.array(values, np.int32), what=name, hint=hints[name])
        expect_equal(
            str(np.asarray(array).dtype),
            "int32",
            what=f"dtype of {name}",
            hint="np.asarray(values, np.int32)",
        )


def test_ex5_2_without_seqlen_keeps_the_natural_length(impl):
    tokenizer = _tokenizer()
    tokens, mask_ar, mask_loss, mask_input = impl.preprocess_tokens(
        PREFIX, CAPTION, tokenizer=tokenizer
    )
    natural = 1 + len(tokenizer.encode(PREFIX)) + 1 + len(tokenizer.encode(CAPTION)) + 1
    expect_equal(
        np.asarray(tokens).shape,
        (natural,),
        what="length with seqlen=None",
        hint="no padding and no cut when seqlen is None",
    )
    expect_equal(int(np.asarray(tokens)[-1]), EOS_ID, what="last token", hint="end with EOS_ID")
    expect_equal(
        np.asarray(mask_input),
        np.ones(natural, np.int32),
        what="mask_input",
        hint="every token is real",
    )


def test_ex5_2_prompt_only_for_decoding(impl):
    tokenizer = _tokenizer()
    tokens, mask_ar, mask_loss, mask_input = impl.preprocess_tokens(
        PREFIX, tokenizer=tokenizer, seqlen=8
    )
    prompt = [BOS_ID, *tokenizer.encode(PREFIX), *tokenizer.encode("\n")]
    padding = [0] * (8 - len(prompt))
    expect_equal(
        np.asarray(tokens),
        np.array(prompt + padding, np.int32),
        what="tokens with suffix=None",
        hint="with no suffix, build only [bos] + prefix + '\\n' (no EOS), then pad",
    )
    expect_equal(
        np.asarray(mask_ar),
        np.zeros(8, np.int32),
        what="mask_ar with suffix=None",
        hint="a prompt is all prefix: mask_ar 0",
    )
    expect_equal(
        np.asarray(mask_loss),
        np.zeros(8, np.int32),
        what="mask_loss with suffix=None",
        hint="nothing to learn in a prompt",
    )
    expect_equal(
        np.asarray(mask_input),
        np.array([1] * len(prompt) + padding, np.int32),
        what="mask_input with suffix=None",
        hint="1 on the prompt, 0 on padding",
    )


def test_ex5_2_empty_suffix_is_a_lone_eos(impl):
    tokenizer = _tokenizer()
    tokens, mask_ar, _, _ = impl.preprocess_tokens(PREFIX, "", tokenizer=tokenizer)
    n_prompt = 2 + len(tokenizer.encode(PREFIX))
    expect_equal(
        np.asarray(tokens)[n_prompt:].tolist(),
        [EOS_ID],
        what="tokens after the prompt",
        hint="suffix='' is a caption of no words: only its EOS (not the same as None)",
    )
    expect_equal(
        np.asarray(mask_ar)[n_prompt:].tolist(),
        [1],
        what="mask_ar of that EOS",
        hint="the EOS belongs to the suffix",
    )


def test_ex5_2_truncation_cuts_the_end_and_warns(impl):
    tokenizer = _tokenizer()
    prompt = [BOS_ID, *tokenizer.encode(PREFIX), *tokenizer.encode("\n")]
    target = [*tokenizer.encode(CAPTION), EOS_ID]
    seqlen = len(prompt) + len(target) - 2  # the last word and the EOS do not fit
    stats = TruncationStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens, mask_ar, mask_loss, mask_input = impl.preprocess_tokens(
            PREFIX, CAPTION, seqlen, tokenizer=tokenizer, stats=stats
        )
    expect_equal(
        np.asarray(tokens),
        np.array((prompt + target)[:seqlen], np.int32),
        what="tokens of a caption too long for seqlen",
        hint="keep the first seqlen tokens: the caption loses its end and its EOS",
    )
    expect_equal(
        np.asarray(mask_loss),
        np.array([0] * len(prompt) + [1] * 3, np.int32)[:seqlen],
        what="mask_loss after the cut",
        hint="cut every mask the same way as the tokens",
    )
    expect_true(
        any(issubclass(w.category, TruncationWarning) for w in caught),
        what="a TruncationWarning was issued",
        hint="warnings.warn('caption truncated: ...', TruncationWarning)",
    )
    expect_equal(
        (stats.captions, stats.truncated, stats.tokens_cut),
        (1, 1, 2),
        what="(captions, truncated, tokens_cut) in stats",
        hint="stats.record(tokens_cut) once per suffix, when stats is given",
    )


def test_ex5_2_a_caption_that_fits_is_counted_without_warning(impl):
    tokenizer = _tokenizer()
    stats = TruncationStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        impl.preprocess_tokens(PREFIX, CAPTION, 32, tokenizer=tokenizer, stats=stats)
        impl.preprocess_tokens(PREFIX, tokenizer=tokenizer, seqlen=32, stats=stats)
    expect_equal(
        [str(w.message) for w in caught],
        [],
        what="warnings for captions that fit",
        hint="warn only when tokens were actually cut",
    )
    expect_equal(
        (stats.captions, stats.truncated, stats.tokens_cut),
        (1, 0, 0),
        what="(captions, truncated, tokens_cut) after one caption that fits and a prompt",
        hint="record 0 for a caption that fits; a prompt (suffix=None) is no caption",
    )


def test_ex5_2_prefix_longer_than_seqlen_is_an_error(impl):
    tokenizer = _tokenizer()
    expect_raises(
        ValueError,
        impl.preprocess_tokens,
        PREFIX,
        CAPTION,
        3,
        tokenizer=tokenizer,
        what="a prefix that does not fit in seqlen=3",
        hint="raise ValueError saying to raise seqlen or shorten the prefix",
    )


# --------------------------------------------------------------------------- 5.3 postprocess_tokens


def test_ex5_3_stops_at_the_first_eos(impl):
    tokenizer = _tokenizer()
    row = [*tokenizer.encode(CAPTION), EOS_ID, *tokenizer.encode("and a"), EOS_ID, PAD_ID]
    got = impl.postprocess_tokens(np.array(row, np.int32), tokenizer=tokenizer)
    expect_equal(
        got,
        CAPTION,
        what="text of a row with tokens after its EOS",
        hint="cut the ids at the first EOS_ID, then tokenizer.decode",
    )


def test_ex5_3_without_eos_reads_to_the_end_and_drops_padding(impl):
    tokenizer = _tokenizer()
    row = [*tokenizer.encode("a red"), PAD_ID, *tokenizer.encode(" star"), PAD_ID, PAD_ID]
    got = impl.postprocess_tokens(np.array(row, np.int32), tokenizer=tokenizer)
    expect_equal(
        got,
        "a red star",
        what="text of a row with padding and no EOS",
        hint="no EOS: keep every id except PAD_ID (0)",
    )


def test_ex5_3_reads_lists_and_a_whole_training_row(impl):
    tokenizer = _tokenizer()
    row = [BOS_ID, *tokenizer.encode(PREFIX + "\n" + CAPTION), EOS_ID, PAD_ID, PAD_ID]
    got = impl.postprocess_tokens(row, tokenizer=tokenizer)
    expect_equal(
        got,
        PREFIX + "\n" + CAPTION,
        what="text of a plain list with BOS and prefix",
        hint="np.asarray(tokens).tolist() reads lists, numpy and jax alike; "
        "decode skips BOS by itself",
    )
    expect_equal(
        impl.postprocess_tokens(np.array([EOS_ID, 9, 9]), tokenizer=tokenizer),
        "",
        what="text of a row that starts with EOS",
        hint="nothing before the EOS",
    )
