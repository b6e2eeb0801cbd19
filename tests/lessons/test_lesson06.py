"""Graded checks for lesson 6 (data): one test per behaviour, named test_ex6_K_<what>."""

import itertools
import json
import warnings

import numpy as np
import pytest

from solutions.data import DataError, DataStats
from tests.grading import expect_close, expect_equal, expect_raises, expect_true

LESSON = 6
SOLUTIONS = ("solutions.data",)
pytestmark = pytest.mark.lesson6


def _line(image="images/a.jpg", prefix="caption en", suffix="a red star", **extra):
    return json.dumps({"image": image, "prefix": prefix, "suffix": suffix, **extra})


def _expect_data_error(fn, *args, source, mentions, what, hint):
    """Calls fn, expects a DataError whose message starts with `source:` and names `mentions`."""
    error = expect_raises(DataError, fn, *args, what=what, hint=hint)
    message = str(error)
    expect_true(
        message.startswith(f"{source}:"),
        what=f"message {message!r} starts with '{source}:'",
        hint="put the source first: DataError(f'{source}: ...')",
    )
    expect_true(
        mentions.lower() in message.lower(),
        what=f"message {message!r} mentions {mentions!r}",
        hint=hint,
    )


# --------------------------------------------------------------------------- 6.1 parse_line


def test_ex6_1_a_good_line_becomes_an_example(impl, tmp_path):
    root = tmp_path.resolve()
    text = _line(image="images/0001.jpg", suffix="A red star.", objects="red star", split=3)
    got = impl.parse_line(text, "data.jsonl:4", root)
    expect_equal(
        got.image_path,
        root / "images" / "0001.jpg",
        what="image_path",
        hint="(root / record['image']).resolve(): absolute, inside the dataset folder",
    )
    expect_equal(
        (got.prefix, got.suffix, got.source),
        ("caption en", "A red star.", "data.jsonl:4"),
        what="(prefix, suffix, source)",
        hint="copy prefix and suffix as they are; source is the argument",
    )
    expect_equal(
        got.extra,
        {"objects": "red star", "split": 3},
        what="extra",
        hint="every field other than image, prefix and suffix, in a dict",
    )


def test_ex6_1_invalid_json_names_the_source(impl, tmp_path):
    for text in ("{'image': 'a.jpg', 'prefix': 'p', 'suffix': 's'}", '{"image": "a.jpg",}', ""):
        _expect_data_error(
            impl.parse_line,
            text,
            "train.jsonl:12",
            tmp_path.resolve(),
            source="train.jsonl:12",
            mentions="JSON",
            what=f"parsing the invalid JSON {text!r}",
            hint="catch json.JSONDecodeError and raise DataError(f'{source}: not valid JSON ...')",
        )


def test_ex6_1_a_line_that_is_not_an_object_is_refused(impl, tmp_path):
    for text in ("[1, 2]", '"caption en"', "42"):
        _expect_data_error(
            impl.parse_line,
            text,
            "d.jsonl:2",
            tmp_path.resolve(),
            source="d.jsonl:2",
            mentions="object",
            what=f"parsing {text!r}",
            hint="check isinstance(record, dict); say a JSON object is expected",
        )


def test_ex6_1_missing_or_non_string_fields_are_named(impl, tmp_path):
    cases = [
        (json.dumps({"image": "a.jpg", "prefix": "caption en"}), "suffix"),
        (json.dumps({"prefix": "caption en", "suffix": "s"}), "image"),
        (_line(image=3), "image"),
        (_line(prefix=None), "prefix"),
        (_line(suffix=["a", "star"]), "suffix"),
    ]
    for text, field in cases:
        _expect_data_error(
            impl.parse_line,
            text,
            "d.jsonl:5",
            tmp_path.resolve(),
            source="d.jsonl:5",
            mentions=field,
            what=f"parsing {text}",
            hint="name the missing or non-string field in the message",
        )


def test_ex6_1_image_paths_must_stay_inside_the_folder(impl, tmp_path):
    root = (tmp_path / "dataset").resolve()
    for image in ("../secret.jpg", "images/../../secret.jpg", "/etc/passwd"):
        _expect_data_error(
            impl.parse_line,
            _line(image=image),
            "d.jsonl:1",
            root,
            source="d.jsonl:1",
            mentions=image,
            what=f"parsing a line with image {image!r}",
            hint="resolve root / image and check .is_relative_to(root); quote "
            "the image path in the message",
        )
    got = impl.parse_line(_line(image="images/../images/b.jpg"), "d.jsonl:1", root)
    expect_equal(
        got.image_path,
        root / "images" / "b.jpg",
        what="image_path with '..' inside",
        hint="a path that leaves and re-enters the folder is fine once resolved",
    )


# --------------------------------------------------------------------------- 6.2 read_jsonl


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_ex6_2_reads_every_line_in_order_with_its_source(impl, tmp_path):
    path = _write(
        tmp_path / "data.jsonl",
        [
            _line(suffix="one"),
            "",
            _line(suffix="two"),
            "   ",
            _line(image="images/c.jpg", suffix="three"),
        ],
    )
    got = impl.read_jsonl(path)
    expect_equal(
        [e.suffix for e in got],
        ["one", "two", "three"],
        what="suffixes, in order",
        hint="one Example per non-blank line, in file order",
    )
    expect_equal(
        [e.source for e in got],
        ["data.jsonl:1", "data.jsonl:3", "data.jsonl:5"],
        what="sources",
        hint="f'{path.name}:{n}', n counting from 1, blank lines too",
    )
    expect_equal(
        got[2].image_path,
        tmp_path.resolve() / "images" / "c.jpg",
        what="image_path",
        hint="by default root is the jsonl file's folder, resolved",
    )


def test_ex6_2_root_can_be_given(impl, tmp_path):
    path = _write(tmp_path / "splits" / "val.jsonl", [_line(image="images/v.jpg")])
    got = impl.read_jsonl(str(path), root=tmp_path)
    expect_equal(
        got[0].image_path,
        tmp_path.resolve() / "images" / "v.jpg",
        what="image_path with root given",
        hint="use root when it is not None; accept str paths too (pathlib.Path(path))",
    )


def test_ex6_2_stops_at_the_first_bad_line_by_default(impl, tmp_path):
    path = _write(tmp_path / "train.jsonl", [_line(), _line(), "{oops", _line(prefix=1)])
    _expect_data_error(
        impl.read_jsonl,
        path,
        source="train.jsonl:3",
        mentions="JSON",
        what="reading a file whose line 3 is broken",
        hint="with on_error='raise', let parse_line's DataError propagate",
    )


def test_ex6_2_skip_mode_leaves_bad_lines_out_and_counts_them(impl, tmp_path):
    path = _write(
        tmp_path / "train.jsonl",
        [_line(suffix="a"), "{oops", _line(suffix="b"), json.dumps({"image": "x"})],
    )
    stats = DataStats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = impl.read_jsonl(path, on_error="skip", stats=stats)
    expect_equal(
        [e.suffix for e in got],
        ["a", "b"],
        what="examples kept in skip mode",
        hint="on_error='skip': catch DataError and go on with the next line",
    )
    expect_equal(
        (stats.read, sum(stats.skipped.values())),
        (2, 2),
        what="(stats.read, lines skipped)",
        hint="stats.skipped[reason] += 1 per bad line; stats.read += len(examples)",
    )
    expect_equal(
        len(caught),
        1,
        what="number of warnings",
        hint="warn once, after the loop, when lines were skipped: warnings.warn(...)",
    )


def test_ex6_2_missing_or_empty_files_are_errors(impl, tmp_path):
    expect_raises(
        FileNotFoundError,
        impl.read_jsonl,
        tmp_path / "nope.jsonl",
        what="reading a file that does not exist",
        hint="check path.is_file() and raise FileNotFoundError naming the path",
    )
    blank = _write(tmp_path / "blank.jsonl", ["", "  "])
    expect_raises(
        DataError,
        impl.read_jsonl,
        blank,
        what="reading a file of blank lines",
        hint="no examples at all is an error: DataError(f'{path}: no usable examples')",
    )
    all_bad = _write(tmp_path / "bad.jsonl", ["{oops", "[]"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expect_raises(
            DataError,
            impl.read_jsonl,
            all_bad,
            on_error="skip",
            what="skip mode on a file where every line is bad",
            hint="after skipping, still raise DataError when nothing is left",
        )
    expect_raises(
        ValueError,
        impl.read_jsonl,
        blank,
        on_error="ignore",
        what="on_error='ignore'",
        hint="accept only 'raise' or 'skip'",
    )


# --------------------------------------------------------------------------- 6.3 shuffled_epochs


def test_ex6_3_every_epoch_is_a_permutation(impl):
    epochs = list(itertools.islice(impl.shuffled_epochs(10, seed=3), 5))
    for number, order in enumerate(epochs):
        expect_equal(
            np.sort(np.asarray(order)),
            np.arange(10),
            what=f"sorted epoch {number}",
            hint="each epoch holds every index 0..N-1 exactly once: rng.permutation(N)",
        )


def test_ex6_3_epochs_are_reshuffled_and_never_end(impl):
    epochs = [tuple(np.asarray(o).tolist()) for o in itertools.islice(impl.shuffled_epochs(10), 50)]
    expect_equal(
        len(epochs),
        50,
        what="epochs drawn from the stream",
        hint="loop forever: while True: yield ...",
    )
    expect_true(
        len(set(epochs)) > 40,
        what=f"epochs differ ({len(set(epochs))} distinct of 50)",
        hint="create the rng once, before the loop, and draw a new permutation each epoch",
    )
    expect_true(
        epochs[0] != tuple(range(10)),
        what="the first epoch is shuffled too",
        hint="shuffle from the first epoch on",
    )


def test_ex6_3_the_seed_decides_the_order(impl):
    def first_epochs(seed):
        return [np.asarray(o).tolist() for o in itertools.islice(impl.shuffled_epochs(12, seed), 3)]

    expect_equal(
        first_epochs(7),
        first_epochs(7),
        what="two streams with seed 7",
        hint="np.random.default_rng(seed): the same seed, the same orders",
    )
    expect_true(
        first_epochs(7) != first_epochs(8),
        what="seeds 7 and 8 give other orders",
        hint="pass seed to np.random.default_rng",
    )
    rng = np.random.default_rng(7)  # the recipe of the docstring, so runs match the course's
    want = [rng.permutation(12).tolist() for _ in range(3)]
    expect_equal(
        first_epochs(7),
        want,
        what="the first 3 epochs with seed 7",
        hint="rng = np.random.default_rng(seed) once, then rng.permutation(N) per epoch",
    )


# --------------------------------------------------------------------------- 6.4 batches


def _examples(n):
    """n example dicts: an image, a text row, and a non-array field."""
    return [
        {
            "image": np.full((2, 2, 3), i, np.float32),
            "text": np.arange(4, dtype=np.int32) + i,
            "caption": f"caption {i}",
        }
        for i in range(n)
    ]


def test_ex6_4_stacks_consecutive_examples(impl):
    got = list(impl.batches(_examples(6), 3))
    expect_equal(
        len(got),
        2,
        what="number of batches of 3 from 6 examples",
        hint="yield each time batch_size examples are collected",
    )
    expect_equal(
        sorted(got[0]),
        ["image", "text"],
        what="keys of a batch",
        hint="stack only np.ndarray values; 'caption' is a string",
    )
    expect_close(
        got[1]["image"],
        np.stack([np.full((2, 2, 3), i, np.float32) for i in (3, 4, 5)]),
        what="images of the second batch",
        hint="np.stack along a new first axis",
    )
    expect_equal(
        got[0]["text"],
        np.arange(4, dtype=np.int32) + np.arange(3)[:, None],
        what="text of the first batch",
        hint="rows in the order the examples came",
    )


def test_ex6_4_the_short_last_batch_is_dropped_or_kept(impl):
    dropped = list(impl.batches(_examples(7), 3))
    kept = list(impl.batches(_examples(7), 3, drop_remainder=False))
    expect_equal(
        [b["text"].shape[0] for b in dropped],
        [3, 3],
        what="batch sizes from 7 examples by 3",
        hint="drop a short last batch by default",
    )
    expect_equal(
        [b["text"].shape[0] for b in kept],
        [3, 3, 1],
        what="batch sizes with drop_remainder=False",
        hint="after the loop, yield what is left when drop_remainder is False",
    )
    expect_equal(
        kept[2]["text"],
        (np.arange(4, dtype=np.int32) + 6)[None],
        what="the last, short batch",
        hint="it holds the 7th example",
    )


def test_ex6_4_reads_only_what_it_yields(impl):
    pulled = []

    def stream():  # long enough to stand for an endless training stream
        for i in range(1000):
            pulled.append(i)
            yield {"text": np.array([i], np.int32)}

    got = list(itertools.islice(impl.batches(stream(), 4), 2))
    expect_equal(
        got[1]["text"],
        np.array([[4], [5], [6], [7]], np.int32),
        what="second batch of a long stream",
        hint="rows in the order they came",
    )
    expect_true(
        len(pulled) <= 9,
        what=f"only the examples of 2 batches were read ({len(pulled)} of 1000 were)",
        hint="a generator (yield), not a list: the training stream "
        "never ends, so never read the whole input first",
    )


def test_ex6_4_batch_size_below_one_is_an_error(impl):
    expect_raises(
        ValueError,
        lambda: next(iter(impl.batches(_examples(2), 0))),
        what="batch_size=0",
        hint="raise ValueError('batch_size must be >= 1, ...')",
    )
