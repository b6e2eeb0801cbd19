"""The tokenizer with PaliGemma's layout, and the longcap100-style data pipeline."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from solutions import data, scenes
from solutions.tokenizer import (
    BOS_ID,
    EOS_ID,
    LOC_TOKENS,
    PAD_ID,
    SEG_TOKENS,
    check_layout,
    load_tokenizer,
    train_tokenizer,
)

SEQLEN = 160  # long scene captions take up to ~100 tokens with this small vocabulary


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A written scenes dataset: 12 train, 4 val examples, 32px images."""
    root = tmp_path_factory.mktemp("scenes")
    scenes.write_dataset(root, n_train=12, n_val=4, n_test=0, image_size=32)
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    sentences = [scenes.long_caption(scenes.sample_scene(i)) for i in range(300)]
    sentences += [scenes.short_caption(scenes.sample_scene(i)) for i in range(300)]
    sentences += ["caption en"] * 20
    return train_tokenizer(
        sentences, tmp_path_factory.mktemp("tok") / "tok.model", num_word_pieces=200
    )


def test_tokenizer_has_paligemma_layout(tokenizer):
    check_layout(tokenizer)
    assert (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.bos_id()) == (0, 1, 2)
    # loc and seg tokens come after every word piece, in order, one id each.
    words = tokenizer.piece_to_id("<loc0000>")
    assert 50 < words <= 200  # the small scenes text needs fewer than 200 pieces
    assert all(not tokenizer.id_to_piece(i).startswith("<loc") for i in range(words))
    assert tokenizer.get_piece_size() == words + len(LOC_TOKENS) + len(SEG_TOKENS)
    assert tokenizer.piece_to_id("<seg127>") == tokenizer.get_piece_size() - 1
    assert tokenizer.encode("<loc0012><seg003>") == [words + 12, words + 1024 + 3]
    assert len(tokenizer.encode("\n")) == 1
    prefix = "caption en"
    assert tokenizer.encode(prefix) + tokenizer.encode("\n") == tokenizer.encode(prefix + "\n")
    caption = scenes.long_caption(scenes.sample_scene(12345))
    assert tokenizer.decode(tokenizer.encode(caption)) == caption


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer there"):
        load_tokenizer(tmp_path / "missing.model")


def test_read_jsonl_and_batches(dataset, tokenizer):
    examples = data.read_jsonl(dataset / "data_train12.jsonl")
    assert len(examples) == 12 and examples[0].source == "data_train12.jsonl:1"
    assert examples[0].prefix == "caption en" and "objects" in examples[0].extra
    stream = data.train_examples(examples, tokenizer=tokenizer, seqlen=SEQLEN, image_size=32)
    batch = next(data.batches(stream, 8))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["text"].shape == (8, SEQLEN) and batch["text"].dtype == np.int32
    assert (batch["text"][:, 0] == BOS_ID).all()
    # every row: prefix (mask_ar 0), suffix ending in EOS (mask_ar 1), then padding.
    for row in range(8):
        real = batch["mask_input"][row].astype(bool)
        assert batch["text"][row][real][-1] == EOS_ID
        assert (batch["text"][row][~real] == PAD_ID).all()
        assert (batch["mask_loss"][row] == batch["mask_ar"][row]).all()


def test_train_examples_repeat_and_reshuffle(dataset, tokenizer):
    examples = data.read_jsonl(dataset / "data_train12.jsonl")
    stream = data.train_examples(examples, tokenizer=tokenizer, seqlen=SEQLEN, image_size=32)
    texts = [tuple(next(stream)["text"]) for _ in range(36)]
    epochs = [texts[i : i + 12] for i in (0, 12, 24)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)  # each epoch sees all 12
    assert epochs[0] != epochs[1]  # in another order


def test_validation_examples_are_prompts_in_order(dataset, tokenizer):
    examples = data.read_jsonl(dataset / "data_val4.jsonl")
    rows = list(
        data.validation_examples(examples, tokenizer=tokenizer, seqlen=SEQLEN, image_size=32)
    )
    assert [r["example"].source for r in rows] == [f"data_val4.jsonl:{i}" for i in range(1, 5)]
    for row in rows:
        assert (row["mask_ar"] == 0).all() and EOS_ID not in row["text"]
        assert row["caption"] == row["example"].suffix.lower()


def _write(folder, lines):
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"image": "images/train_00000.jpg", "prefix": "caption en", "suffix": "x"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "data.jsonl:2: not valid JSON"),
        (
            json.dumps({"image": "a.jpg", "prefix": "p"}),
            r"data.jsonl:2: missing field\(s\) \['suffix'\]",
        ),
        (
            json.dumps({"image": "../../etc/passwd", "prefix": "p", "suffix": "s"}),
            "data.jsonl:2: image path '../../etc/passwd' leaves the dataset folder",
        ),
        (json.dumps({"image": 3, "prefix": "p", "suffix": "s"}), "data.jsonl:2: field 'image'"),
        ("[1, 2]", "data.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_lines_name_file_and_line(dataset, line, message):
    path = _write(dataset, [GOOD, line])
    with pytest.raises(data.DataError, match=message):
        data.read_jsonl(path)


def test_skip_mode_counts_bad_lines(dataset):
    stats = data.DataStats()
    path = _write(dataset, [GOOD, "{oops", json.dumps({"image": "a.jpg"}), GOOD])
    with pytest.warns(UserWarning, match="2 skipped"):
        examples = data.read_jsonl(path, on_error="skip", stats=stats)
    assert len(examples) == 2 and stats.read == 2 and sum(stats.skipped.values()) == 2
    assert "not valid JSON" in str(stats)


def test_missing_and_corrupt_images(dataset, tokenizer, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    lines = [
        json.dumps({"image": "nowhere.jpg", "prefix": "caption en", "suffix": "a"}),
        json.dumps({"image": "broken.jpg", "prefix": "caption en", "suffix": "b"}),
    ]
    examples = data.read_jsonl(_write(tmp_path, lines))
    with pytest.raises(data.DataError, match="data.jsonl:1: image .*nowhere.jpg does not exist"):
        data.load_image(examples[0])
    with pytest.raises(
        data.DataError, match="data.jsonl:2: image .*broken.jpg is not an image Pillow can read"
    ):
        data.load_image(examples[1])
    # In skip mode the stream skips both and then says there is nothing usable.
    stats = data.DataStats()
    stream = data.train_examples(
        examples, tokenizer=tokenizer, seqlen=SEQLEN, on_error="skip", stats=stats
    )
    with pytest.raises(data.DataError, match="no readable example"):
        next(stream)
    assert sum(stats.skipped.values()) == 2


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset file"):
        data.read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(data.DataError, match="no usable examples"):
        data.read_jsonl(_write(tmp_path, [""]))


def test_bytes_that_are_not_utf8_name_their_line(tmp_path):
    path = tmp_path / "data.jsonl"
    latin1 = json.dumps(
        {"image": "a.jpg", "prefix": "caption en", "suffix": "café"}, ensure_ascii=False
    )
    path.write_bytes((GOOD + "\n" + latin1 + "\n").encode("latin-1"))
    with pytest.raises(data.DataError, match=r"data.jsonl:2: not UTF-8 text \(byte 0xe9 at col"):
        data.read_jsonl(path)
    stats = data.DataStats()
    with pytest.warns(UserWarning, match="1 not UTF-8 text"):
        assert len(data.read_jsonl(path, on_error="skip", stats=stats)) == 1


def test_a_byte_order_mark_is_accepted(dataset):
    path = dataset / "bom.jsonl"
    path.write_text(GOOD + "\n" + GOOD + "\n", encoding="utf-8-sig")
    assert [e.source for e in data.read_jsonl(path)] == ["bom.jsonl:1", "bom.jsonl:2"]


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (8000, 7000, "is 8000x7000 = 56,000,000 pixels, over the limit of 50,000,000"),
        (
            30000,
            30000,
            "claims more pixels than Pillow will decode",
        ),  # Pillow's DecompressionBombError
    ],
)
def test_huge_images_name_their_line_before_decoding(tmp_path, width, height, message):
    (tmp_path / "huge.png").write_bytes(png_claiming(width, height))
    line = json.dumps({"image": "huge.png", "prefix": "caption en", "suffix": "big"})
    (example,) = data.read_jsonl(_write(tmp_path, [line]))
    with pytest.raises(data.DataError, match=rf"^data.jsonl:1: image .*huge.png {message}"):
        data.load_image(example)


def test_a_prefix_longer_than_seqlen_names_its_line(dataset, tokenizer):
    examples = data.read_jsonl(dataset / "data_val4.jsonl")
    stream = data.validation_examples(examples, tokenizer=tokenizer, seqlen=3, image_size=32)
    with pytest.raises(data.DataError, match=r"^data_val4.jsonl:1: prefix 'caption en' takes"):
        next(stream)
