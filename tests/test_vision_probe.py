"""`capstone.experiments.vision_probe`: the one-shape kind probe of the image tower."""

from __future__ import annotations

import numpy as np

from capstone.experiments import vision_probe
from solutions import scenes


def test_one_shape_scenes_label_their_shape():
    rng = np.random.default_rng(0)
    drawn = [vision_probe.one_shape_scene(rng) for _ in range(60)]
    for scene, kind in drawn:
        assert len(scene.shapes) == 1 and scene.background == scenes.Background("white")
        assert scene.shapes[0].kind == scenes.KINDS[kind]
    assert {kind for _, kind in drawn} == set(range(len(scenes.KINDS)))  # every kind shows up


def test_quick_probe_reports_accuracies(capsys):
    settings = vision_probe.ProbeSettings(
        steps=2, batch_size=4, num_train=8, num_val=4, eval_every=1
    )
    history = vision_probe.probe(settings)
    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert np.isfinite(h["loss"])
        # 4 images each: accuracy is a count of right answers over 4.
        assert h["train_accuracy"] * 4 in range(5) and h["val_accuracy"] * 4 in range(5)

    assert vision_probe.main(["--steps", "2", "--num-train", "4", "--num-val", "4"]) == 0
    assert "kind accuracy on unseen images:" in capsys.readouterr().out
