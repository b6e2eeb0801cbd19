"""`capstone.experiments.pair_probe`: recoloured scenes, the split by pair, and a quick run."""

from __future__ import annotations

import numpy as np

from capstone.experiments import pair_probe
from solutions import checkpoints, scenes


def test_recoloured_scenes_keep_layouts_and_reach_held_out_pairs():
    drawn = pair_probe.recoloured_scenes(200, seed=3)
    again = pair_probe.recoloured_scenes(200, seed=3)
    assert drawn == again  # seeded
    originals = [scenes.sample_scene(scenes.example_seed(3, "train", i)) for i in range(200)]
    for new, old in zip(drawn, originals, strict=True):
        assert [(s.kind, s.size, s.position) for s in new.shapes] == [
            (s.kind, s.size, s.position) for s in old.shapes
        ]
    pairs = {(s.colour, s.kind) for scene in drawn for s in scene.shapes}
    assert scenes.HELD_OUT_PAIRS <= pairs  # training layouts never hold these; recoloured ones do


def test_accuracy_by_pair_splits_patches_by_their_pair():
    kind = pair_probe.KINDS.index
    colour = pair_probe.COLOURS.index
    held_colour, held_kind = sorted(scenes.HELD_OUT_PAIRS)[0]  # ("blue", "triangle")
    kinds = np.array([0, kind("circle"), kind("circle"), kind(held_kind), kind(held_kind)])
    colours = np.array([0, colour("red"), colour("red"), colour(held_colour), colour(held_colour)])
    predicted = np.array([3, kind("circle"), kind("square"), kind(held_kind), kind("star")])
    # Background patches do not count; one of two right on each side.
    assert pair_probe.accuracy_by_pair(predicted, kinds, colours) == {"seen": 0.5, "held_out": 0.5}


def test_quick_probe_of_the_shipped_tower():
    results = pair_probe.probe(checkpoints.TINY_ASSETS, num_train=24, num_test=12, steps=5)
    assert set(results) == {"restricted pairs", "every pair"}
    for scores in results.values():
        assert set(scores) == {"seen", "held_out"}
        assert all(0.0 <= value <= 1.0 for value in scores.values())
