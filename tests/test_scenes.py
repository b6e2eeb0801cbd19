"""The shapes dataset: deterministic scenes, truthful captions, a parser that inverts them."""

from __future__ import annotations

import inspect
import json
import pathlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from solutions import scenes
from solutions.scenes import (
    ATTRIBUTES,
    KINDS,
    POSITIONS,
    Background,
    ParsedObject,
    Scene,
    Shape,
    attribute_f1,
    long_caption,
    object_f1,
    objects_text,
    parse_caption,
    render_scene,
    sample_scene,
    scene_objects,
    short_caption,
    show_examples,
    write_dataset,
)

N_SCENES = 500


@pytest.fixture(scope="module")
def train_scenes():
    return [sample_scene(seed) for seed in range(N_SCENES)]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_scene_and_pixels():
    for seed in (0, 1, 123456):
        assert sample_scene(seed) == sample_scene(seed)
        first = np.asarray(render_scene(sample_scene(seed), size=64))
        again = np.asarray(render_scene(sample_scene(seed), size=64))
        np.testing.assert_array_equal(first, again)


def test_different_seeds_differ():
    assert sample_scene(0) != sample_scene(1)
    images = [np.asarray(render_scene(sample_scene(seed), size=64)) for seed in range(5)]
    assert all(not np.array_equal(a, b) for i, a in enumerate(images) for b in images[i + 1 :])


def test_generator_and_int_seed_agree():
    assert sample_scene(np.random.default_rng(42)) == sample_scene(42)


def test_render_size_and_mode():
    image = render_scene(sample_scene(3), size=48)
    assert image.mode == "RGB" and image.size == (48, 48)


# ----------------------------------------------------------------------------- what scenes hold


def test_attributes_in_range(train_scenes):
    for scene in train_scenes:
        assert 1 <= len(scene.shapes) <= scenes.MAX_SHAPES
        assert scene.background.tone in scenes.TONES
        assert scene.background.pattern in scenes.PATTERNS
        for shape in scene.shapes:
            assert shape.kind in scenes.KINDS and shape.colour in scenes.COLOURS
            assert shape.size in scenes.SIZES and shape.position in scenes.POSITIONS
            assert max(abs(v) for v in shape.offset) <= 0.2
            assert abs(shape.angle) <= scenes.MAX_ANGLE


def test_every_value_occurs(train_scenes):
    """500 scenes are plenty to see every count, kind, colour, cell and background."""
    shapes = [s for scene in train_scenes for s in scene.shapes]
    assert {len(scene.shapes) for scene in train_scenes} == {1, 2, 3, 4}
    assert {s.kind for s in shapes} == set(scenes.KINDS)
    assert {s.colour for s in shapes} == set(scenes.COLOURS)
    assert {s.size for s in shapes} == set(scenes.SIZES)
    assert {s.position for s in shapes} == set(scenes.POSITIONS)
    assert {scene.background.tone for scene in train_scenes} == set(scenes.TONES)
    assert {scene.background.pattern for scene in train_scenes} == set(scenes.PATTERNS)


def test_cells_are_shared_only_by_described_stacks(train_scenes):
    stacks = 0
    for scene in train_scenes:
        cells = Counter(s.position for s in scene.shapes)
        for cell, count in cells.items():
            if count == 2:
                base, top = [s for s in scene.shapes if s.position == cell]
                assert (base.size, top.size) == ("large", "small") and base.colour != top.colour
                assert "on top of it" in long_caption(scene)
                stacks += 1
            else:
                assert count == 1
    # STACK_PROBABILITY of the three quarters of scenes with 2+ shapes
    expected = N_SCENES * 0.75 * scenes.STACK_PROBABILITY
    assert 0.5 * expected < stacks < 1.5 * expected


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: Shape("circle", "grey", "large", "centre"), "Shape.colour"),
        (lambda: Shape("oval", "red", "large", "centre"), "Shape.kind"),
        (lambda: Shape("circle", "red", "huge", "centre"), "Shape.size"),
        (lambda: Shape("circle", "red", "large", "middle"), "Shape.position"),
        (lambda: Shape("circle", "red", "large", "centre", offset=(0.4, 0.0)), "Shape.offset"),
        (lambda: Background("pink"), "Background.tone"),
        (lambda: Scene(Background("white"), ()), "Scene.shapes"),
        (
            lambda: Scene(
                Background("white"),
                (Shape("circle", "red", "small", "centre"), Shape("star", "blue", "small", "top")),
            ),
            "reading order",
        ),
        (
            lambda: Scene(
                Background("white"),
                (Shape("circle", "red", "large", "top"), Shape("star", "red", "small", "top")),
            ),
            "another colour",
        ),
        (lambda: sample_scene(0, split="dev"), "split"),
    ],
)
def test_bad_values_are_refused_by_name(make, field):
    with pytest.raises(ValueError, match=field):
        make()


# ----------------------------------------------------------------------------- captions


def _worked_scene() -> Scene:
    return Scene(
        Background("grey", "striped"),
        (
            Shape("circle", "red", "large", "top left"),
            Shape("square", "blue", "small", "right"),
            Shape("cross", "pink", "large", "bottom"),
            Shape("star", "yellow", "small", "bottom"),
        ),
    )


def test_captions_of_a_worked_example():
    scene = _worked_scene()
    assert short_caption(scene) == (
        "a large red circle, a small blue square, a large pink cross and a small yellow star"
    )
    assert long_caption(scene) == (
        "Four shapes sit on a striped grey background. In the top left there is a large red "
        "circle. A small blue square sits on the right. At the bottom there is a large pink "
        "cross with a small yellow star on top of it. The red circle is above the blue square."
    )


def test_long_captions_have_two_to_five_sentences(train_scenes):
    counts = {long_caption(scene).count(".") for scene in train_scenes}
    assert counts <= {2, 3, 4, 5} and {2, 5} <= counts


def test_vocabulary_is_small(train_scenes):
    words = {w for scene in train_scenes for w in long_caption(scene).lower().split()}
    assert len(words) < 80, sorted(words)


def test_parse_inverts_both_caption_styles(train_scenes):
    for scene in train_scenes + [sample_scene(seed, split="test") for seed in range(100)]:
        objects = scene_objects(scene)
        assert Counter(parse_caption(long_caption(scene))) == Counter(objects)
        assert Counter(parse_caption(objects_text(scene))) == Counter(objects)
        without_position = [obj._replace(position=None) for obj in objects]
        assert Counter(parse_caption(short_caption(scene))) == Counter(without_position)
        assert object_f1(short_caption(scene), scene) == (1.0, 1.0, 1.0)
        assert object_f1(long_caption(scene), scene, match_position=True) == (1.0, 1.0, 1.0)
        assert object_f1(long_caption(scene), short_caption(scene)) == (1.0, 1.0, 1.0)
        assert object_f1(short_caption(scene), long_caption(scene)) == (1.0, 1.0, 1.0)


def test_attribute_f1_tells_which_attribute_is_wrong():
    scene = _worked_scene()  # 4 shapes
    truth = scene_objects(scene)
    assert attribute_f1(long_caption(scene), scene) == dict.fromkeys(ATTRIBUTES, 1.0)
    assert attribute_f1(short_caption(scene), scene) == {
        "size": 1.0,
        "colour": 1.0,
        "kind": 1.0,
        "position": 0.0,
    }
    # Every kind named wrong, the rest right: circle, square, cross, star become square,
    # triangle, heart, cross. Two of those four kinds are in the scene (a square, a
    # cross), so kind F1 is 2/4 while no shape matches as a whole.
    other = {kind: KINDS[(KINDS.index(kind) + 1) % len(KINDS)] for kind in KINDS}
    wrong_kinds = [obj._replace(kind=other[obj.kind]) for obj in truth]
    caption = " ".join(
        f"{POSITIONS[o.position].capitalize()} there is a {o.size} {o.colour} {o.kind}."
        for o in wrong_kinds
    )
    assert [o.kind for o in wrong_kinds] == ["square", "triangle", "heart", "cross"]
    scores = attribute_f1(caption, scene)
    assert scores == {"size": 1.0, "colour": 1.0, "kind": 0.5, "position": 1.0}
    assert object_f1(caption, scene)[2] == 0.0
    assert attribute_f1("", scene) == dict.fromkeys(ATTRIBUTES, 0.0)


def test_parse_tolerates_model_errors():
    text = "In the centre there is a a large red circle and a blue square. Blah small green star"
    # "blue square" lacks its size and is skipped; the last sentence has no position.
    assert parse_caption(text) == [
        ParsedObject("large", "red", "circle", "centre"),
        ParsedObject("small", "green", "star", None),
    ]
    assert parse_caption("") == [] and parse_caption("big gray circle in the center") == []
    assert parse_caption("A big red circle in the center.") == [
        ParsedObject("large", "red", "circle", "centre")
    ]


def test_f1_on_a_worked_example():
    scene = _worked_scene()  # 4 shapes
    predicted = "a large red circle, a small blue square, a large pink star and a small red star"
    # 2 of 4 predicted shapes are right (circle, square): precision 2/4, recall 2/4.
    assert object_f1(predicted, scene) == (0.5, 0.5, 0.5)
    predicted = "a large red circle, a small blue square and a large green heart"
    # 2 of 3 predicted right, 2 of 4 true found: P = 2/3, R = 1/2, F1 = 2PR/(P+R) = 4/7.
    precision, recall, f1 = object_f1(predicted, scene)
    assert (precision, recall) == (2 / 3, 0.5) and f1 == pytest.approx(4 / 7)


def test_f1_with_positions():
    scene = _worked_scene()
    wrong_cell = long_caption(scene).replace("on the right", "on the left")
    assert wrong_cell != long_caption(scene)
    assert object_f1(wrong_cell, scene) == (1.0, 1.0, 1.0)
    assert object_f1(wrong_cell, scene, match_position=True) == (0.75, 0.75, 0.75)
    # a caption that names no positions matches nothing when positions must match
    assert object_f1(short_caption(scene), scene, match_position=True) == (0.0, 0.0, 0.0)


def test_f1_counts_repeats_once_each():
    scene = Scene(Background("white"), (Shape("circle", "red", "large", "top"),))
    # the reference shape matches one of the two predicted copies: P = 1/2, R = 1
    precision, recall, f1 = object_f1("a large red circle and a large red circle", scene)
    assert (precision, recall) == (0.5, 1.0) and f1 == pytest.approx(2 / 3)
    assert object_f1("nothing here", scene) == (0.0, 0.0, 0.0)
    twins = Scene(
        Background("white"),
        (Shape("circle", "red", "large", "top"), Shape("circle", "red", "large", "bottom")),
    )
    assert object_f1("a large red circle and a large red circle", twins) == (1.0, 1.0, 1.0)
    # one of two twins found: P = 1, R = 1/2, F1 = 2/3
    precision, recall, f1 = object_f1("a large red circle", twins)
    assert (precision, recall) == (1.0, 0.5) and f1 == pytest.approx(2 / 3)
    assert object_f1("", "") == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- held-out pairs


def _pairs(scene: Scene) -> set[tuple[str, str]]:
    return {(s.colour, s.kind) for s in scene.shapes}


def test_held_out_pairs_only_in_test(train_scenes):
    val_scenes = [sample_scene(seed, split="val") for seed in range(N_SCENES)]
    test_scenes = [sample_scene(seed, split="test") for seed in range(200)]
    for scene in train_scenes + val_scenes:
        assert not _pairs(scene) & scenes.HELD_OUT_PAIRS, long_caption(scene)
    for scene in test_scenes:
        assert _pairs(scene) & scenes.HELD_OUT_PAIRS, long_caption(scene)
    assert set().union(*map(_pairs, test_scenes)) >= scenes.HELD_OUT_PAIRS
    # every colour and every kind is still seen in training, only not in those pairs
    train_pairs = set().union(*map(_pairs, train_scenes))
    assert {c for c, _ in train_pairs} == set(scenes.COLOURS)
    assert {k for _, k in train_pairs} == set(scenes.KINDS)


# ----------------------------------------------------------------------------- pixels


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(scenes.COLOURS, key=lambda name: np.sum((np.array(scenes.COLOURS[name]) - rgb) ** 2))


def test_shape_centres_have_their_colour():
    """The pixel at each shape's centre is its colour, unless a stacked shape covers it."""
    checked = 0
    for seed in range(40):
        scene = sample_scene(seed)
        pixels = np.asarray(render_scene(scene, size=224)).astype(int)
        for i, shape in enumerate(scene.shapes):
            if any(later.position == shape.position for later in scene.shapes[i + 1 :]):
                continue
            x, y = (int(v * 224) for v in scenes.shape_centre(shape))
            assert _nearest_colour(pixels[y, x]) == shape.colour, (seed, shape)
            assert np.abs(pixels[y, x] - scenes.COLOURS[shape.colour]).max() <= 10
            checked += 1
    assert checked >= 40


# ----------------------------------------------------------------------------- files on disk


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_defaults_give_longcap100_names():
    defaults = inspect.signature(write_dataset).parameters
    names = {scenes.jsonl_name(split, defaults[f"n_{split}"].default) for split in ("train", "val")}
    assert names == {"data_train90.jsonl", "data_val10.jsonl"}
    assert defaults["prefix"].default == "caption en"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    paths = write_dataset(out, n_train=6, n_val=2, n_test=4, image_size=64, seed=3)
    return out, paths


def test_written_jsonl_is_longcap100_like(written):
    out, paths = written
    assert {p.name for p in paths.values()} == {
        "data_train6.jsonl",
        "data_val2.jsonl",
        "data_test4.jsonl",
    }
    for split, path in paths.items():
        rows = _read_jsonl(path)
        assert len(rows) == {"train": 6, "val": 2, "test": 4}[split]
        for index, row in enumerate(rows):
            assert set(row) == {"image", "prefix", "suffix", "objects"}
            # strings only, so readers that turn every field into a tensor accept the rows
            assert all(isinstance(v, str) for v in row.values())
            assert row["prefix"] == "caption en"
            image_path = (out / row["image"]).resolve()
            assert not pathlib.Path(row["image"]).is_absolute()
            assert image_path.is_relative_to(out.resolve())
            with Image.open(image_path) as image:
                assert image.format == "JPEG" and image.size == (64, 64)
                assert image.mode == "RGB"
            scene = sample_scene(scenes.example_seed(3, split, index), split=split)
            assert row["suffix"] == long_caption(scene)
            assert Counter(parse_caption(row["objects"])) == Counter(scene_objects(scene))
            held_out = any(p[1:3] in scenes.HELD_OUT_PAIRS for p in parse_caption(row["objects"]))
            assert held_out == (split == "test")


def test_splits_hold_different_scenes(written):
    out, paths = written
    rows = {split: _read_jsonl(path) for split, path in paths.items()}
    assert rows["train"][0]["objects"] != rows["val"][0]["objects"]
    train_image = (out / rows["train"][0]["image"]).read_bytes()
    assert train_image != (out / rows["val"][0]["image"]).read_bytes()


def test_writing_again_is_idempotent(written):
    out, paths = written
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    write_dataset(out, n_train=6, n_val=2, n_test=4, image_size=64, seed=3)
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert before == after
    assert not [p for p in after if p.name.endswith(".tmp")]


def test_bigger_splits_extend_smaller_ones(tmp_path):
    small = write_dataset(tmp_path / "a", n_train=2, n_val=0, n_test=0, image_size=32)
    big = write_dataset(tmp_path / "b", n_train=4, n_val=0, n_test=0, image_size=32)
    assert list(small) == ["train"]
    assert _read_jsonl(big["train"])[:2] == _read_jsonl(small["train"])


def test_short_captions_and_prefix(tmp_path):
    paths = write_dataset(
        tmp_path, n_train=2, n_val=0, n_test=0, caption="short", prefix="cap", image_size=32
    )
    for index, row in enumerate(_read_jsonl(paths["train"])):
        scene = sample_scene(scenes.example_seed(0, "train", index))
        assert row["suffix"] == short_caption(scene) and row["prefix"] == "cap"
    with pytest.raises(ValueError, match="caption"):
        write_dataset(tmp_path, caption="medium")


def test_command_line(tmp_path, capsys):
    scenes.dataset.main(
        [str(tmp_path), "--train", "3", "--val", "1", "--test", "2", "--image-size", "32"]
    )
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "data_test2.jsonl",
        "data_train3.jsonl",
        "data_val1.jsonl",
    ]
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 6
    assert "data_train3.jsonl" in capsys.readouterr().out


def test_show_examples_captions_every_image():
    examples = [(render_scene(sample_scene(i), size=32), f"caption {i}") for i in range(5)]
    figure = show_examples(examples, ncols=4)
    titled = [ax.get_title(loc="left") for ax in figure.axes if ax.get_title(loc="left")]
    assert titled == [f"caption {i}" for i in range(5)] and len(figure.axes) == 8


def test_worker_processes_write_the_same_files(tmp_path):
    one = write_dataset(tmp_path / "one", n_train=3, n_val=1, n_test=1, image_size=32)
    two = write_dataset(tmp_path / "two", n_train=3, n_val=1, n_test=1, image_size=32, workers=2)
    for split in one:
        assert one[split].read_text() == two[split].read_text()
    for image in (tmp_path / "one" / "images").iterdir():
        assert image.read_bytes() == (tmp_path / "two" / "images" / image.name).read_bytes()
