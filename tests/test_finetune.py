"""`capstone.finetune`: the run folder, resume, Ctrl-C and bad data, on a quickly built model."""

from __future__ import annotations

import json
import re

import pytest

from capstone import finetune
from capstone.factory import pretrain
from solutions import scenes
from solutions.data import DataError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    quick = pretrain.Settings(
        vision_steps=2, vision_batch_size=4, steps=3, batch_size=4, num_scenes=12, num_eval=4
    )
    pretrain.pretrain(folder, quick)
    return folder


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the scenes dataset goes to ./runs/
    return tmp_path


def _run(assets, out, *extra):
    args = ["--assets", str(assets), "--steps", "4", "--save-every", "2", "--max-decode-len", "8"]
    return finetune.main([*args, "--out", str(out), *extra])


def test_default_run_writes_everything(assets, in_tmp, capsys):
    assert _run(assets, in_tmp / "run") == 0
    run = in_tmp / "run"
    for name in ("checkpoint.npz", "state.json", "metrics.json", "loss.png", "report.html"):
        assert (run / name).exists(), name
    assert json.loads((run / "state.json").read_text()) == {"step": 4}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ended"] == "finished"
    sizes = {"validation": 50, "test": 50}
    for when in ("before", "after"):
        assert set(metrics[when]) == set(sizes)
        for name, n in sizes.items():
            report = metrics[when][name]
            assert report["n_examples"] == n
            assert {"cider", "object_f1", "object_f1_position", "repeating"} <= set(report)
            assert set(report["attribute_f1"]) == set(scenes.ATTRIBUTES)
    assert report_rows(run) == 100
    out = capsys.readouterr().out
    assert "before:" in out and "val_00000.jpg" in out  # captions of validation images
    # The score tables, printed and in the report, hold the numbers of metrics.json.
    page = (run / "report.html").read_text()
    for name in sizes:
        before, after = metrics["before"][name], metrics["after"][name]
        table = out.split(f"Scores on {sizes[name]} {name} examples")[1].split("Scores on")[0]
        kinds = before["attribute_f1"]["kind"], after["attribute_f1"]["kind"]
        assert re.search(rf"F1 of kind alone +{kinds[0]:.3f} +{kinds[1]:.3f}\n", table), table
        assert f"<td>CIDEr</td><td>{before['cider']:.3f}</td><td>{after['cider']:.3f}</td>" in page
        repeats = before["repeating"], after["repeating"]
        assert re.search(rf"repeating a word 3x +{repeats[0]} +{repeats[1]}\n", table), table


def test_a_bigger_validation_set_on_request(assets, in_tmp):
    _run(assets, in_tmp / "run", "--num-val", "12", "--steps", "2")
    metrics = json.loads((in_tmp / "run" / "metrics.json").read_text())
    assert metrics["after"]["validation"]["n_examples"] == 12
    assert (in_tmp / "runs" / "scenes-longcap" / "data_val12.jsonl").exists()


def test_no_validation_scenes_is_refused(capsys):
    with pytest.raises(SystemExit):
        finetune.parse_settings(["--num-val", "0"])
    assert "--num-val must be at least 1, not 0" in capsys.readouterr().err


def report_rows(run):
    return (run / "report.html").read_text().count("<tr><td><img")


def test_scored_scenes_are_the_written_ones(in_tmp):
    train, evals = finetune.prepare_data(None, "raise")
    assert len(train) == 90 and [(e.name, len(e.examples)) for e in evals] == [
        ("validation", 50),
        ("test", 50),
    ]
    for evals_set in evals:
        for example, scene in zip(evals_set.examples, evals_set.scenes, strict=True):
            assert example.extra["objects"] == scenes.objects_text(scene)
    test_pairs = {(s.colour, s.kind) for s in evals[1].scenes[0].shapes}
    assert test_pairs & scenes.HELD_OUT_PAIRS


def test_resume_continues_from_the_saved_step(assets, in_tmp, monkeypatch):
    run = in_tmp / "run"
    _run(assets, run, "--steps", "2")
    assert json.loads((run / "state.json").read_text()) == {"step": 2}
    seen = []
    real = finetune.cosine_schedule
    monkeypatch.setattr(
        finetune, "cosine_schedule", lambda step, **kw: seen.append(step) or real(step, **kw)
    )
    finetune.main(
        ["--assets", str(assets), "--steps", "4", "--max-decode-len", "8", "--resume", str(run)]
    )
    assert seen == [3, 4]
    assert json.loads((run / "state.json").read_text()) == {"step": 4}


def test_ctrl_c_keeps_the_last_completed_step(assets, in_tmp, monkeypatch):
    real = finetune.make_update_fn

    def interrupted_at_step_3(*args, **kwargs):
        update_fn, calls = real(*args, **kwargs), []

        def step(params, batch, lr):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return update_fn(params, batch, lr)

        return step

    monkeypatch.setattr(finetune, "make_update_fn", interrupted_at_step_3)
    _run(assets, in_tmp / "run", "--save-every", "100")
    metrics = json.loads((in_tmp / "run" / "metrics.json").read_text())
    assert metrics["ended"] == "interrupted after step 2"
    assert json.loads((in_tmp / "run" / "state.json").read_text()) == {"step": 2}


def test_nan_stops_cleanly_with_last_good_params(assets, in_tmp):
    _run(assets, in_tmp / "run", "--learning-rate", "1e30", "--steps", "6")
    metrics = json.loads((in_tmp / "run" / "metrics.json").read_text())
    assert metrics["ended"].startswith("stopped")
    state = in_tmp / "run" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["step"] < 6


def test_bad_dataset_line_names_file_and_line(assets, in_tmp, capsys):
    folder = in_tmp / "mydata"
    paths = scenes.write_dataset(folder, n_train=90, n_val=10, n_test=0, image_size=32)
    lines = paths["train"].read_text().splitlines()
    lines[6] = "{broken"
    paths["train"].write_text("\n".join(lines) + "\n")
    assert _run(assets, in_tmp / "run", "--data", str(folder)) == 2
    assert "data_train90.jsonl:7: not valid JSON" in capsys.readouterr().err
    with pytest.raises(DataError, match="data_train90.jsonl:7: not valid JSON"):
        _run(assets, in_tmp / "run", "--data", str(folder), "--debug")


def test_lora_run_writes_merged_weights_adapters_and_a_peft_folder(assets, in_tmp):
    from solutions import checkpoints, lora
    from solutions.params import load_params
    from solutions.peft_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    lora_flags = ["--trainable", "lora", "--lora-rank", "2", "--lora-targets", "attn+mlp"]
    assert _run(assets, in_tmp / "run", *lora_flags, "--num-val", "4") == 0
    run = in_tmp / "run"
    assert json.loads((run / "state.json").read_text()) == {"step": 4}
    assert (run / "peft" / ADAPTER_CONFIG).is_file() and (run / "peft" / ADAPTER_WEIGHTS).is_file()
    model, resolution, base, _ = checkpoints.load_tiny(assets)
    config = lora.LoraConfig(rank=2, targets="attn+mlp")
    adapters = load_params(run / "lora.npz", like=lora.init_adapters(base, config))
    # The adapters trained (B left zero), and checkpoint.npz is the base with them merged.
    assert any(abs(b).max() > 0 for _, b in lora.adapter_pairs(adapters).values())
    merged = load_params(run / "checkpoint.npz")
    expected = lora.merge_adapters(base, adapters, config)
    for name in ("llm/layers/attn/attn_vec_einsum/w", "llm/layers/mlp/linear", "img/head/kernel"):
        got, want = merged, expected
        for key in name.split("/"):
            got, want = got[key], want[key]
        assert abs(got.astype("float32") - want.astype("float32")).max() < 1e-6, name


def test_lora_run_resumes_from_its_adapters(assets, in_tmp):
    flags = ["--trainable", "lora", "--lora-rank", "2", "--num-val", "4"]
    assert _run(assets, in_tmp / "run", *flags) == 0
    args = ["--assets", str(assets), "--resume", str(in_tmp / "run"), "--steps", "6"]
    assert finetune.main([*args, "--max-decode-len", "8", *flags]) == 0
    assert json.loads((in_tmp / "run" / "state.json").read_text()) == {"step": 6}


def test_resuming_a_run_that_was_not_lora_as_lora_is_refused(assets, in_tmp, capsys):
    assert _run(assets, in_tmp / "run", "--num-val", "4") == 0
    args = ["--assets", str(assets), "--resume", str(in_tmp / "run"), "--steps", "6"]
    with pytest.raises(SystemExit) as stop:  # refused with the flags, before any loading
        finetune.main([*args, "--trainable", "lora"])
    assert stop.value.code == 2
    assert "has no lora.npz: it was not a LoRA run" in capsys.readouterr().err
