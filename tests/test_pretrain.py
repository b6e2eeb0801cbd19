"""`capstone.factory.pretrain`: the recipe that builds the shipped model runs, reproducibly."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from capstone.factory import pretrain
from solutions.model import Model, param_shapes
from solutions.params import load_params
from solutions.tokenizer import load_tokenizer

QUICK = pretrain.Settings(
    vision_steps=2, vision_batch_size=4, steps=3, batch_size=4, num_scenes=12, num_eval=4, seed=0
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(folder, scores) of one quick pretraining run; tests that change files copy it."""
    folder = tmp_path_factory.mktemp("quick")
    return folder, pretrain.pretrain(folder, QUICK)


def test_quick_run_writes_loadable_assets_and_is_reproducible(quick_run, tmp_path):
    folder, first = quick_run
    pretrain.pretrain(tmp_path / "b", QUICK)
    a, b = folder / "params.npz", tmp_path / "b" / "params.npz"
    assert a.read_bytes() == b.read_bytes()  # same seed, same file

    card = json.loads((folder / "config.json").read_text())
    tokenizer = load_tokenizer(folder / "tokenizer.model")
    assert card["config"]["llm"]["vocab_size"] == tokenizer.get_piece_size()
    model = Model(**card["config"])
    params = load_params(a, like=param_shapes(model, card["resolution"]))
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    assert all(x.dtype.name == "bfloat16" for x in leaves)
    assert first["num_params"] == sum(x.size for x in leaves)
    # Validation scenes hold no held-out pair, so that score has nothing to count there.
    assert first["val"]["caption_pair_recall_held_out"] is None
    assert "| n/a |" in (folder / "MODEL_CARD.md").read_text()
    for split in ("val", "test"):
        for key in pretrain.SCORE_LABELS:
            if (split, key) != ("val", "caption_pair_recall_held_out"):
                assert 0.0 <= first[split][key] <= 1.0, (split, key)
    assert set(first["stage0_readout_accuracy"]) >= {"kind", "colour", "size", "final_loss"}
    card_text = (folder / "MODEL_CARD.md").read_text()
    assert "| score | validation | test |" in card_text
    assert "naming kinds at random" in card_text


def test_rescore_gives_back_the_same_scores(quick_run, tmp_path):
    folder, first = quick_run
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    config = tmp_path / "config.json"
    card = json.loads(config.read_text())
    card["scores"]["test"] = {"caption_object_f1": -1.0}  # as if scored by an older recipe
    config.write_text(json.dumps(card))
    params_before = (tmp_path / "params.npz").read_bytes()

    again = pretrain.rescore(tmp_path)
    assert again == json.loads(json.dumps(first))  # JSON turns tuples into lists
    assert json.loads(config.read_text())["scores"] == again
    assert (tmp_path / "params.npz").read_bytes() == params_before
    assert f"| {again['test']['caption_kind_f1']} |" in (tmp_path / "MODEL_CARD.md").read_text()


def test_random_kind_f1_is_what_guessing_kinds_scores():
    from solutions import scenes

    one = [scenes.Scene(scenes.Background("white"), (scenes.Shape("star", "red", "large", "top"),))]
    # One shape: a random kind is right one time in len(KINDS).
    assert abs(pretrain.random_kind_f1(one, draws=3000) - 1 / len(scenes.KINDS)) < 0.02
    four_stars = [
        scenes.Scene(
            scenes.Background("white"),
            tuple(
                scenes.Shape("star", "red", "large", cell)
                for cell in ("top", "left", "right", "bottom")
            ),
        )
    ]
    # Four stars: each guess is a star with probability 1/6, and every star guessed matches.
    assert abs(pretrain.random_kind_f1(four_stars, draws=3000) - 1 / len(scenes.KINDS)) < 0.02


def test_patch_targets_label_the_shapes_and_the_background():
    from capstone.factory.pretrain_vision import PATCH_LABELS, patch_targets
    from solutions import scenes

    base = scenes.Shape("square", "red", "large", "centre")
    top = scenes.Shape("star", "blue", "small", "centre")
    alone = scenes.Shape("heart", "green", "small", "top left", offset=(0.2, -0.2))
    scene = scenes.Scene(scenes.Background("white"), (alone, base, top))
    targets = patch_targets(scene, grid=3)
    kinds = PATCH_LABELS["kind"]
    # One patch per grid cell: the cell's shape, and a shape stacked on it as the second one.
    assert list(targets["kind"]) == [kinds.index("heart"), 0, 0, 0, kinds.index("square")] + [0] * 4
    assert list(targets["kind_2"]) == [0] * 4 + [kinds.index("star")] + [0] * 4
    assert targets["colour_2"][4] == PATCH_LABELS["colour_2"].index("blue")
    assert targets["size"][0] == PATCH_LABELS["size"].index("small")
    assert targets["tone"] == list(scenes.TONES).index("white")
    # On a finer grid the large square covers the middle patches and the corners stay empty.
    fine = patch_targets(scene, grid=8)["kind"].reshape(8, 8)
    assert (fine[3:5, 3:5] == kinds.index("square")).all()
    assert (fine[:, -1] == 0).all() and (fine[-1, :] == 0).all()


def test_layout_text_lists_every_cell_with_its_position_and_the_background():
    from solutions import scenes

    base = scenes.Shape("square", "red", "large", "centre")
    top = scenes.Shape("star", "blue", "small", "centre")
    other = scenes.Shape("circle", "green", "small", "bottom right")
    scene = scenes.Scene(scenes.Background("grey", "dotted"), (base, top, other))
    text = pretrain.layout_text(scene)
    assert text == (
        "a small blue star on top of a large red square in the centre; "
        "a small green circle in the bottom right; on a dotted grey background"
    )
    found = scenes.parse_caption(text)
    assert {(o.kind, o.position) for o in found} == {
        ("star", "centre"),
        ("square", "centre"),
        ("circle", "bottom right"),
    }


def test_stage0_scores_held_out_scenes_as_it_goes(capsys):
    from capstone.factory import pretrain_vision
    from solutions import scenes
    from solutions.model import init_params

    model = Model(**pretrain.tiny_config(vocab_size=64))
    params = init_params(model, pretrain.RESOLUTION, seed=0)
    images, drawn = pretrain.render_scenes(4, "train", 0, "train")
    held_out = pretrain.render_scenes(3, "val", 0, "val")
    trained, accuracy = pretrain_vision.train_vision(
        model,
        params,
        images,
        drawn,
        steps=3,
        batch_size=2,
        learning_rate=1e-3,
        held_out=held_out,
        eval_every=1,
    )
    printed = capsys.readouterr().out
    assert "stage 0 step 1: read-out accuracy" in printed
    assert "stage 0 step 2: read-out accuracy" in printed
    assert "stage 0 step 3:" not in printed  # the last step is scored once, at the end
    # A second shape's labels are scored only when some patch shows one (a stack).
    stacked = any(len(g) == 2 for s in held_out[1] for g in scenes.cell_groups(s))
    second = {f"{name}_2" for name in pretrain_vision.SHAPE_LABELS}
    assert set(accuracy) == {
        *pretrain_vision.SHAPE_LABELS,
        *(second if stacked else ()),
        pretrain_vision.CELL_LABEL,
        *pretrain_vision.IMAGE_LABELS,
        "final_loss",
    }
    # Only the image tower moves; the decoder is stage 1's.
    before, after = jax.tree.leaves(params["llm"]), jax.tree.leaves(trained["llm"])
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert not np.array_equal(
        params["img"]["embedding"]["kernel"], trained["img"]["embedding"]["kernel"]
    )


def test_pair_recall_tells_held_out_pairs_from_seen_ones():
    from solutions import scenes

    colour, kind = sorted(scenes.HELD_OUT_PAIRS)[0]  # ("blue", "triangle")
    held = scenes.Shape(kind, colour, "large", "centre")
    seen = scenes.Shape("circle", "red", "small", "top left")
    assert ("red", "circle") not in scenes.HELD_OUT_PAIRS
    scene = scenes.Scene(scenes.Background("white"), (seen, held))  # reading order

    right = f"a small red circle and a large {colour} {kind}"
    assert pretrain.pair_recall([right], [scene]) == {"seen": 1.0, "held_out": 1.0}
    # The usual failure: the held-out pair's colour with a kind seen with that colour.
    wrong = f"a small red circle and a large {colour} star"
    assert pretrain.pair_recall([wrong], [scene]) == {"seen": 1.0, "held_out": 0.0}
    # One name finds one shape: two red circles named once recall half of them.
    twins = scenes.Scene(
        scenes.Background("white"), (seen, dataclasses.replace(seen, position="bottom right"))
    )
    assert pretrain.pair_recall(["a small red circle"], [twins]) == {"seen": 0.5, "held_out": None}


def test_held_out_readings_say_what_the_model_calls_an_unseen_pair():
    from solutions import scenes

    held = [
        scenes.Shape(k, c, "large", cell)
        for (c, k), cell in zip(
            sorted(scenes.HELD_OUT_PAIRS)[:3], ("top left", "centre", "bottom right"), strict=True
        )
    ]
    seen = scenes.Shape("circle", "red", "small", "top")
    assert ("red", "circle") not in scenes.HELD_OUT_PAIRS
    scene = scenes.Scene(scenes.Background("white"), (held[0], seen, held[1], held[2]))
    (c0, k0), (c1, k1), (c2, k2) = [(s.colour, s.kind) for s in held]
    other = next(k for k in scenes.KINDS if k not in (k0, k1, k2))
    # Right in its cell; right colour but another kind; right pair in the wrong cell.
    layout = (
        f"a large {c0} {k0} in the top left; a small red circle at the top; "
        f"a large {c1} {other} in the centre; a large {c2} {k2} in the top right"
    )
    readings = pretrain.held_out_readings([layout], [scene])
    third = round(1 / 3, 4)
    assert readings == {
        "shapes": 3,
        "both": third,
        "colour": third,
        "kind": 0.0,
        "neither": third,
        "swaps": [[f"{c1} {k1}", f"{c1} {other}", 1]],
    }
    only_seen = scenes.Scene(scenes.Background("white"), (seen,))
    assert pretrain.held_out_readings(["a small red circle at the top"], [only_seen]) is None


def test_stage1_optimizer_warms_the_image_tower_up_slowly():
    import jax.numpy as jnp

    optimizer = pretrain.stage1_optimizer(tower_warmup=4)
    params = {"img/embedding/kernel": jnp.ones(3), "llm/embedder/input_embedding": jnp.ones(3)}
    grads = jax.tree.map(jnp.ones_like, params)
    state = optimizer.init(params)
    tower_share = []
    for _ in range(6):
        updates, state = optimizer.update(grads, state, params)
        img, llm = updates["img/embedding/kernel"], updates["llm/embedder/input_embedding"]
        assert float(llm[0]) < 0  # Adam points downhill at full size from the first step
        tower_share.append(round(float(img[0] / llm[0]), 4))
    assert tower_share == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
