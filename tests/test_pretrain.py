"""`capstone.pretrain`: the recipe that builds the shipped model runs and is reproducible."""

from __future__ import annotations

import json

import jax
import numpy as np

from capstone import pretrain
from solutions.model import Model, param_shapes
from solutions.params import load_params
from solutions.tokenizer import load_tokenizer

QUICK = pretrain.Settings(steps=3, batch_size=4, num_scenes=12, num_eval=4, seed=0)


def test_quick_run_writes_loadable_assets_and_is_reproducible(tmp_path):
    first = pretrain.pretrain(tmp_path / "a", QUICK)
    pretrain.pretrain(tmp_path / "b", QUICK)
    a, b = (tmp_path / name / "params.npz" for name in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()  # same seed, same file

    card = json.loads((tmp_path / "a" / "config.json").read_text())
    tokenizer = load_tokenizer(tmp_path / "a" / "tokenizer.model")
    assert card["config"]["llm"]["vocab_size"] == tokenizer.get_piece_size()
    model = Model(**card["config"])
    params = load_params(a, like=param_shapes(model, card["resolution"]))
    leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
    assert all(x.dtype.name == "bfloat16" for x in leaves)
    assert first["num_params"] == sum(x.size for x in leaves)
    assert 0.0 <= first["test_object_f1"] <= 1.0
    assert "Scores on the held-out test split" in (tmp_path / "a" / "MODEL_CARD.md").read_text()
