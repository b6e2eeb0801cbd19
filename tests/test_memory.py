"""`capstone.tools.memory`: compiled memory analysis of a training step, no allocation."""

from __future__ import annotations

import json

from capstone.tools import memory
from tests.conftest import TINY_IMG, TINY_LLM_PG1, TINY_RESOLUTION


def _tiny_report(**kwargs):
    config = {"img": TINY_IMG, "llm": TINY_LLM_PG1}
    return memory.training_step_memory(config, TINY_RESOLUTION, batch_size=4, seqlen=16, **kwargs)


def test_report_accounts_for_parameters_and_grows_with_what_trains():
    attn = _tiny_report(trainable="attn")
    everything = _tiny_report(trainable="all")
    assert attn["argument"] >= attn["params"] + attn["batch"]
    assert attn["peak"] >= attn["params"]
    # Training everything keeps every parameter in float32 and needs every gradient.
    assert everything["trainable_params"] > attn["trainable_params"]
    assert everything["params"] > attn["params"]
    assert everything["peak"] > attn["peak"]


def test_remat_saves_activation_memory_on_a_longer_sequence():
    config = {"img": TINY_IMG, "llm": {**TINY_LLM_PG1, "depth": 6}}
    kept = memory.training_step_memory(
        config, 32, batch_size=8, seqlen=64, trainable="all", remat=False
    )
    recomputed = memory.training_step_memory(
        config, 32, batch_size=8, seqlen=64, trainable="all", remat=True
    )
    assert recomputed["temp"] < kept["temp"]


def test_cli_real_3b_model_without_allocating_it(capsys):
    assert (
        memory.main(
            [
                "--model",
                "paligemma-3b-pt-224",
                "--batch-size",
                "8",
                "--seqlen",
                "128",
                "--trainable",
                "attn",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    # Frozen weights in float16 and the attention weights in float32: about 5.8 GiB.
    assert 5.5 < report["params"] / memory.GIB < 6.0
    assert report["peak"] > report["params"]
    assert "T4 (16 GB)" in out
