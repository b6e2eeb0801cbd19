"""The shipped tiny PaliGemma (`capstone/assets/tiny`): small, loadable, and as good as its
model card says, measured here on validation scenes it was never scored on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capstone.factory import pretrain
from solutions import checkpoints, scenes
from solutions.preprocess import preprocess_image

ASSETS = checkpoints.TINY_ASSETS
MAX_BYTES = 8 * 2**20
FRESH = range(64, 96)  # the model card scored val scenes 0-63; these are new to it


@pytest.fixture(scope="module")
def shipped():
    model, resolution, params, tokenizer = checkpoints.load_tiny(ASSETS)
    images = np.zeros((len(FRESH), resolution, resolution, 3), np.float32)
    drawn = []
    for row, index in enumerate(FRESH):
        scene = scenes.sample_scene(scenes.example_seed(0, "val", index), split="val")
        images[row] = preprocess_image(scenes.render_scene(scene), resolution)
        drawn.append(scene)
    return model, params, tokenizer, images, drawn


def test_assets_fit_the_budget_and_the_card_matches_the_config():
    files = ["params.npz", "tokenizer.model", "config.json", "MODEL_CARD.md"]
    total = sum((ASSETS / name).stat().st_size for name in files)
    assert total <= MAX_BYTES, f"{total / 2**20:.1f} MB > 8 MB"
    card = json.loads((ASSETS / "config.json").read_text())
    text = (ASSETS / "MODEL_CARD.md").read_text()
    assert f"{card['scores']['num_params']:,} parameters" in text
    assert str(card["scores"]["val"]["caption_object_f1"]) in text


def _attribute_accuracy(captions, drawn, attribute):
    """Share of shapes, matched in reading order, whose `attribute` the caption gets right."""
    right = total = 0
    for caption, scene in zip(captions, drawn, strict=True):
        truth = scenes.scene_objects(scene)
        said = scenes.parse_caption(caption)
        total += len(truth)
        right += sum(
            getattr(a, attribute) == getattr(b, attribute)
            for a, b in zip(truth, said, strict=False)
        )
    return right / total


def test_short_captions_on_unseen_validation_scenes(shipped):
    model, params, tokenizer, images, drawn = shipped
    captions = pretrain.generate(params, model, tokenizer, images, "caption en")
    f1 = np.mean([scenes.object_f1(c, s)[2] for c, s in zip(captions, drawn, strict=True)])
    colour = _attribute_accuracy(captions, drawn, "colour")
    size = _attribute_accuracy(captions, drawn, "size")
    kind = _attribute_accuracy(captions, drawn, "kind")
    print(f"object F1 {f1:.3f}; colour {colour:.3f}, size {size:.3f}, kind {kind:.3f}")
    # Measured 1.00, 1.00 and 0.976 (a kind named at random is right 1 time in 6) and object
    # F1 0.969; the bounds leave room for another platform's float rounding, not for a worse model.
    assert colour >= 0.95 and size >= 0.95
    assert kind >= 0.93
    assert f1 >= 0.92


def test_counting_on_unseen_validation_scenes(shipped):
    model, params, tokenizer, images, drawn = shipped
    answers = pretrain.generate(params, model, tokenizer, images, "count en")
    right = [a == pretrain.NUMBERS[len(s.shapes)] for a, s in zip(answers, drawn, strict=True)]
    assert np.mean(right) >= 0.8, answers  # the model card measured 0.92 on other scenes
