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


def test_lora_trains_a_sliver_and_keeps_every_base_weight_frozen():
    from solutions import lora

    config = lora.LoraConfig(rank=2, targets="attn+mlp")
    adapted = _tiny_report(trainable="lora", lora_config=config)
    everything = _tiny_report(trainable="all")
    assert 0 < adapted["trainable_params"] < _tiny_report(trainable="attn")["trainable_params"]
    assert adapted["peak"] < everything["peak"]


def test_largest_batch_is_read_off_the_line_and_is_right_at_the_edge():
    config = {"img": TINY_IMG, "llm": TINY_LLM_PG1}

    def peak(batch):
        return memory.training_step_memory(
            config, TINY_RESOLUTION, batch_size=batch, seqlen=16, trainable="attn"
        )["peak"]

    # A capacity half-way between the peaks of batch 6 and 7 must allow exactly 6.
    capacity = (peak(6) + peak(7)) / 2
    found = memory.largest_batches(
        config,
        TINY_RESOLUTION,
        {"edge": capacity, "none": peak(1) / 2},
        seqlen=16,
        trainable="attn",
    )
    assert found == {"edge": 6, "none": 0}


def test_plan_table_has_a_row_per_model_and_strategy(monkeypatch):
    monkeypatch.setattr(
        memory, "largest_batches", lambda *args, **kwargs: dict.fromkeys(memory.ACCELERATORS, 3)
    )
    table = memory.plan_table(("paligemma-3b-pt-224",), seqlen=128).splitlines()
    assert len(table) == 2 + len(memory.PLAN_STRATEGIES)
    assert table[2].startswith("| paligemma-3b-pt-224 | attn | 3 |")
    assert any("| lora |" in row for row in table)
