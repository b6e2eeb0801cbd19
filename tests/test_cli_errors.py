"""Bad input through the real command-line entry points, as a new user would give it.

Every mistake ends in one line on stderr naming the flag, file or line and exit code 2,
with no traceback, and leaves the files as they were; flags that cannot work are refused
before any model loads. A run whose loss or parameters go NaN keeps its last finite
checkpoint, bit for bit, and resumes from it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capstone import finetune
from capstone.experiments import pair_probe, vision_probe
from capstone.factory import pretrain
from capstone.tools import bench, memory, step_speed
from solutions import scenes
from solutions.model import Model, param_shapes
from solutions.params import flatten_params, load_params, save_params, unflatten_params
from solutions.tokenizer import train_tokenizer
from tests.conftest import TINY_IMG
from tests.test_data import png_claiming

FAST = ["--max-decode-len", "4", "--batch-size", "2", "--seqlen", "160"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny model at random initialisation in the shipped layout: built in a second,
    it captions junk, which is all these tests need."""
    folder = tmp_path_factory.mktemp("assets")
    sentences = [scenes.long_caption(scenes.sample_scene(i)) for i in range(200)]
    tokenizer = train_tokenizer(
        [*sentences, "caption en"], folder / "tokenizer.model", num_word_pieces=150
    )
    llm = dict(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16)
    config = {"img": TINY_IMG, "llm": {**llm, "vocab_size": tokenizer.get_piece_size()}}
    rng = np.random.default_rng(0)  # drawn from the shapes: init_params would compile for 9 s
    shapes = param_shapes(Model(**config), 16)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype), shapes)
    save_params(params, folder / "params.npz")
    (folder / "config.json").write_text(json.dumps({"config": config, "resolution": 16}))
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A longcap100-style folder of small scenes, its training file saved with a byte
    order mark (as Windows' Notepad does): accepted."""
    folder = tmp_path_factory.mktemp("data")
    paths = scenes.write_dataset(folder, n_train=90, n_val=10, n_test=0, image_size=16)
    text = paths["train"].read_text(encoding="utf-8")
    paths["train"].write_text(text, encoding="utf-8-sig")
    return folder


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run folders and the scenes dataset go to ./runs/
    return tmp_path


@pytest.fixture
def no_loading(monkeypatch):
    """Makes loading a model or preparing data fail the test: refusals must come first."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")

    for name in ("load_tiny", "load_real", "prepare_data"):
        monkeypatch.setattr(finetune, name, must_not_run)


def files_under(folder: pathlib.Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


def refused(command, argv, capsys, *expected) -> str:
    """Runs `command(argv)`, which must exit with 2 and one line on stderr holding every
    string of `expected`; returns that line."""
    try:
        code = command(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    line = captured.err.strip()
    assert "\n" not in line, captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert line.startswith(f"{os.path.basename(sys.argv[0])}: error: "), line
    for part in expected:
        assert part in line, (part, line)
    return line


def run_folder(folder: pathlib.Path, step: int, params, **state_override) -> pathlib.Path:
    """A run folder as a fine-tune leaves it after `step` steps."""
    save_params(params, folder / "checkpoint.npz")
    (folder / "state.json").write_text(json.dumps({"step": step, **state_override}))
    return folder


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--steps", "0"], ["--steps must be at least 1, not 0"]),
        (["--steps", "-3"], ["--steps must be at least 1, not -3"]),
        (["--batch-size", "0"], ["--batch-size must be at least 1, not 0"]),
        (["--batch-size", "-8"], ["--batch-size must be at least 1, not -8"]),
        (["--save-every", "0"], ["--save-every must be at least 1, not 0"]),
        (["--max-decode-len", "0"], ["--max-decode-len must be at least 1, not 0"]),
        (["--num-val", "0"], ["--num-val must be at least 1, not 0"]),
        (["--seed", "-1"], ["--seed must be at least 0, not -1"]),
        (["--learning-rate", "nan"], ["--learning-rate must be a finite number of at least 0"]),
        (["--learning-rate", "inf"], ["--learning-rate must be a finite", "not inf"]),
        (["--learning-rate", "-0.1"], ["--learning-rate must be a finite", "not -0.1"]),
        (["--seqlen", "3"], ["--seqlen must be at least", "the prompt 'caption en' takes"]),
        (["--steps", "ten"], ["argument --steps: invalid int value: 'ten'"]),
        (["--stepz", "10"], ["unrecognized arguments: --stepz"]),
        (["--trainable", "mlp"], ["argument --trainable: invalid choice: 'mlp'"]),
        (
            ["--model", "paligemma-3b-pt224"],
            ["--model: Unknown checkpoint", "did you mean 'paligemma-3b-pt-224'?", "'tiny'"],
        ),
        (["--model", "paligemma2-3b-pt-448"], ["needs --checkpoint", "'kaggle'"]),
        (
            ["--model", "paligemma2-3b-pt-448", "--checkpoint", "nowhere/pg2.npz"],
            ["--checkpoint nowhere/pg2.npz: no such file"],
        ),
        (["--checkpoint", "kaggle"], ["--checkpoint is for a real --model"]),
    ],
)
def test_flags_that_cannot_work_are_refused_before_any_loading(
    assets, in_tmp, no_loading, capsys, flags, expected
):
    refused(finetune.main, ["--assets", str(assets), *flags], capsys, *expected)
    assert files_under(in_tmp) == {}  # no run folder, no dataset


def test_run_folders_that_cannot_be_written_are_refused(assets, in_tmp, no_loading, capsys):
    (in_tmp / "notes.txt").write_text("mine")
    before = files_under(in_tmp)
    for out, message in [
        ("notes.txt", "--out notes.txt is a file"),
        ("notes.txt/run", "--out notes.txt/run: " + str(in_tmp / "notes.txt") + " is a file"),
    ]:
        refused(finetune.main, ["--assets", str(assets), "--out", out], capsys, message)
    assert files_under(in_tmp) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_run_folder_is_refused(assets, in_tmp, no_loading, capsys):
    locked = in_tmp / "locked"
    locked.mkdir(mode=0o500)
    refused(finetune.main, ["--assets", str(assets), "--out", "locked/run"], capsys, "not writable")


def test_data_folders_that_are_not_datasets_are_refused(assets, in_tmp, no_loading, capsys):
    (in_tmp / "notes.txt").write_text("mine")
    (in_tmp / "photos").mkdir()
    before = files_under(in_tmp)
    argv = ["--assets", str(assets), "--data"]
    refused(finetune.main, [*argv, "notes.txt"], capsys, "--data notes.txt is a file")
    refused(
        finetune.main,
        [*argv, "photos"],
        capsys,
        "--data photos has no data_train90.jsonl and no data_val10.jsonl",
    )
    assert files_under(in_tmp) == before


# --------------------------------------------------------------------------- resuming


@pytest.fixture
def params(assets):
    return load_params(assets / "params.npz")


@pytest.mark.parametrize(
    "state, expected",
    [
        ('{"step": 4', ["state.json is damaged (", 'it should read {"step": N}']),
        ("", ["state.json is damaged ("]),
        ('{"step": "4"}', ['state.json holds {"step": "4"}']),
        ('{"step": true}', ['state.json holds {"step": true}']),
        ('{"step": -1}', ['state.json holds {"step": -1}']),
        ("[4]", ["state.json holds [4]"]),
        ('{"steps": 4}', ['state.json holds {"steps": 4}']),
    ],
)
def test_resume_of_a_damaged_state_is_refused(
    assets, in_tmp, no_loading, params, capsys, state, expected
):
    run = run_folder(in_tmp / "run", 4, params)
    (run / "state.json").write_text(state)
    before = files_under(in_tmp)
    refused(finetune.main, ["--assets", str(assets), "--resume", "run"], capsys, *expected)
    assert files_under(in_tmp) == before


def test_resume_needs_a_whole_run_folder(assets, in_tmp, no_loading, params, capsys):
    argv = ["--assets", str(assets), "--resume", "run"]
    refused(finetune.main, argv, capsys, "--resume run: no such run folder")
    assert not (in_tmp / "run").exists()  # and it is not made
    (in_tmp / "run").mkdir()
    refused(finetune.main, argv, capsys, "it has no state.json")
    (in_tmp / "run" / "state.json").write_text('{"step": 4}')
    refused(finetune.main, argv, capsys, "state.json names step 4 but checkpoint.npz is missing")
    run_folder(in_tmp / "run", 4, params)
    refused(
        finetune.main,
        [*argv, "--steps", "3"],
        capsys,
        "--steps 3 is fewer than the 4 steps run has done",
    )
    refused(finetune.main, [*argv, "--out", "elsewhere"], capsys, "name two folders")
    assert sorted(files_under(in_tmp)) == ["run", "run/checkpoint.npz", "run/state.json"]


def test_resume_refuses_a_damaged_or_diverged_checkpoint(assets, dataset, in_tmp, params, capsys):
    run = run_folder(in_tmp / "run", 2, params)
    argv = ["--assets", str(assets), "--data", str(dataset), "--resume", "run", "--steps", "4"]
    checkpoint = run / "checkpoint.npz"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    refused(finetune.main, argv, capsys, "run/checkpoint.npz is not an .npz checkpoint")

    flat = flatten_params(params)
    flat["llm/final_norm/scale"] = np.full_like(flat["llm/final_norm/scale"], np.inf)
    save_params(unflatten_params(flat), checkpoint)
    before = files_under(in_tmp)
    refused(
        finetune.main,
        argv,
        capsys,
        "run/checkpoint.npz: parameter 'llm/final_norm/scale' holds 32 NaN or inf values",
        "--allow-nonfinite-weights",
    )
    assert files_under(in_tmp) == before


# --------------------------------------------------------------------------- files


def test_a_broken_model_folder_names_its_file(assets, dataset, in_tmp, tmp_path, capsys):
    broken = tmp_path / "assets"
    argv = ["--assets", str(broken), "--data", str(dataset)]
    refused(finetune.main, argv, capsys, "config.json is missing")
    broken.mkdir()
    for name in ("params.npz", "tokenizer.model"):
        (broken / name).write_bytes((assets / name).read_bytes())
    (broken / "config.json").write_text('{"config": ')
    refused(finetune.main, argv, capsys, "config.json is not the model card")
    (broken / "config.json").write_text((assets / "config.json").read_text())
    flat = flatten_params(load_params(assets / "params.npz"))
    flat["img/head/bias"][0] = np.nan
    save_params(unflatten_params(flat), broken / "params.npz")
    refused(
        finetune.main,
        argv,
        capsys,
        f"{broken / 'params.npz'}: parameter 'img/head/bias' holds 1 NaN or inf values of 32",
    )
    (broken / "tokenizer.model").write_bytes(b"not a tokenizer")
    refused(finetune.main, argv, capsys, "tokenizer.model is not a SentencePiece")


def _copy_dataset(dataset: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    for path in dataset.rglob("*"):
        if path.is_file():
            target = folder / path.relative_to(dataset)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return folder


def test_bad_dataset_lines_name_file_and_line(assets, dataset, in_tmp, capsys):
    folder = _copy_dataset(dataset, in_tmp / "mydata")
    argv = ["--assets", str(assets), "--data", "mydata", "--out", "run", *FAST]
    train = folder / "data_train90.jsonl"
    lines = train.read_bytes().splitlines()
    broken = lines[2].replace(b"caption en", b"caption \xe0n")
    train.write_bytes(b"\n".join([*lines[:2], broken, *lines[3:]]))
    refused(finetune.main, argv, capsys, "data_train90.jsonl:3: not UTF-8 text (byte 0xe0 at")
    train.write_bytes(b"\n".join([*lines[:6], b"{broken", *lines[7:]]))
    refused(finetune.main, argv, capsys, "data_train90.jsonl:7: not valid JSON")
    train.write_bytes(b"\n".join(lines))

    val = folder / "data_val10.jsonl"
    for (width, height), message in [
        ((8000, 7000), "is 8000x7000 = 56,000,000 pixels, over the limit"),
        ((30000, 30000), "claims more pixels than Pillow will decode"),
    ]:
        (folder / "images" / "val_00000.jpg").write_bytes(png_claiming(width, height))
        refused(finetune.main, argv, capsys, "data_val10.jsonl:1: image ", message)
    assert not (in_tmp / "run").exists()  # they all stop before the first save
    assert val.exists()


def test_a_missing_data_folder_without_network_leaves_nothing(assets, in_tmp, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError(ConnectionRefusedError("refused"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    argv = ["--assets", str(assets), "--data", "longcap100", "--out", "run"]
    for _ in range(2):  # and a second try behaves as the first
        refused(finetune.main, argv, capsys, "Could not download", "no network")
        assert not (in_tmp / "longcap100").exists() and not (in_tmp / "run").exists()


def test_debug_shows_the_traceback(dataset, in_tmp, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        finetune.main(["--assets", str(tmp_path / "none"), "--data", str(dataset), "--debug"])


# --------------------------------------------------------------------------- NaN


@pytest.fixture
def no_captions(monkeypatch):
    """Skips the captions before and after training (and their compilation): these tests
    are about what the run folder keeps."""

    def empty_captions(run, params, decode):
        return {eval_set.name: ["x"] * len(eval_set.examples) for eval_set in run.evals}

    monkeypatch.setattr(finetune, "caption_sets", empty_captions)


class Recorder:
    """Wraps `finetune._save`, keeping a copy of the checkpoint's bytes after each save."""

    def __init__(self, monkeypatch):
        self.saved: dict[int, bytes] = {}
        real = finetune._save

        def save(run, params, step):
            real(run, params, step)
            self.saved[step] = (run.out / "checkpoint.npz").read_bytes()

        monkeypatch.setattr(finetune, "_save", save)


def step_going_bad(monkeypatch, at_step: int, how: str):
    """Makes update `at_step` meet a NaN batch ("batch": its loss is NaN and the step keeps
    its inputs) or return NaN parameters while its loss is finite ("params")."""
    real = finetune.make_update_fn

    def make_update_fn(*args, **kwargs):
        update_fn, calls = real(*args, **kwargs), []

        def step(params, batch, lr):
            calls.append(1)
            if len(calls) == at_step and how == "batch":
                batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
            params, loss = update_fn(params, batch, lr)
            if len(calls) == at_step and how == "params":
                params = jax.tree.map(lambda x: x * jnp.nan, params)
            return params, loss

        return step

    monkeypatch.setattr(finetune, "make_update_fn", make_update_fn)


def test_nan_loss_keeps_the_step_before_bit_for_bit_and_resumes_from_it(
    assets, dataset, in_tmp, no_captions, monkeypatch, capsys
):
    saves = Recorder(monkeypatch)
    with monkeypatch.context() as patch:
        step_going_bad(patch, at_step=4, how="batch")
        argv = ["--assets", str(assets), "--data", str(dataset), "--out", "run", *FAST]
        assert finetune.main([*argv, "--steps", "6", "--save-every", "1"]) == 0
    run = in_tmp / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["ended"].startswith("stopped: Loss is nan at step 4 (learning rate")
    assert "the run folder keeps step 3" in metrics["ended"]
    assert sorted(saves.saved) == [1, 2, 3]  # and the stop wrote nothing over step 3
    assert (run / "checkpoint.npz").read_bytes() == saves.saved[3]
    assert json.loads((run / "state.json").read_text()) == {"step": 3}
    assert "stopped: Loss is nan at step 4" in capsys.readouterr().out

    seen = []
    real = finetune.cosine_schedule
    monkeypatch.setattr(
        finetune, "cosine_schedule", lambda step, **kw: seen.append(step) or real(step, **kw)
    )
    assert finetune.main([*argv[:4], "--resume", "run", "--steps", "6", *FAST]) == 0
    assert seen == [4, 5, 6]
    assert "Resuming run from step 4" in capsys.readouterr().out
    assert json.loads((run / "state.json").read_text()) == {"step": 6}


def test_parameters_gone_nan_are_never_saved(assets, dataset, in_tmp, no_captions, monkeypatch):
    """Step 3's update returns NaN parameters with a finite loss; step 4's loss is then NaN
    and its inputs, those parameters, are not saved: step 2's checkpoint stays."""
    saves = Recorder(monkeypatch)
    step_going_bad(monkeypatch, at_step=3, how="params")
    argv = ["--assets", str(assets), "--data", str(dataset), "--out", "run", *FAST]
    assert finetune.main([*argv, "--steps", "6", "--save-every", "2"]) == 0
    run = in_tmp / "run"
    ended = json.loads((run / "metrics.json").read_text())["ended"]
    assert ended.startswith("stopped: Loss is nan at step 4")
    assert "the parameters NaN or inf, so the run folder keeps step 2" in ended
    assert sorted(saves.saved) == [2]
    assert (run / "checkpoint.npz").read_bytes() == saves.saved[2]
    assert json.loads((run / "state.json").read_text()) == {"step": 2}


def test_nan_parameters_at_a_save_stop_the_run_unsaved(
    assets, dataset, in_tmp, no_captions, monkeypatch
):
    saves = Recorder(monkeypatch)
    step_going_bad(monkeypatch, at_step=1, how="params")
    argv = ["--assets", str(assets), "--data", str(dataset), "--out", "run", *FAST]
    assert finetune.main([*argv, "--steps", "4", "--save-every", "1"]) == 0
    ended = json.loads((in_tmp / "run" / "metrics.json").read_text())["ended"]
    assert ended.startswith("stopped at step 1 (learning rate")
    assert "nothing is saved: the only finite parameters are the starting ones" in ended
    assert saves.saved == {} and sorted(os.listdir(in_tmp / "run")) == [
        "loss.png",
        "metrics.json",
        "report.html",
    ]


def test_the_last_step_still_learns(assets, dataset, in_tmp, no_captions, monkeypatch):
    rates = []
    real = finetune.cosine_schedule
    monkeypatch.setattr(
        finetune, "cosine_schedule", lambda step, **kw: rates.append(real(step, **kw)) or rates[-1]
    )
    argv = ["--assets", str(assets), "--data", str(dataset), "--out", "run", *FAST]
    assert finetune.main([*argv, "--steps", "3"]) == 0
    assert float(rates[-1]) > 0


def test_stale_temporaries_are_removed_on_resume(assets, dataset, in_tmp, no_captions, params):
    run = run_folder(in_tmp / "run", 2, params)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".checkpoint.npz.{dead.pid}.tmp"
    stale.write_bytes(b"PK half an archive, its writer killed")
    argv = ["--assets", str(assets), "--data", str(dataset), "--resume", "run", *FAST]
    assert finetune.main([*argv, "--steps", "2"]) == 0
    assert not stale.exists()


# --------------------------------------------------------------------------- other commands


def test_every_command_prints_one_line_and_exits_with_2(tmp_path, monkeypatch, capsys):
    refused(memory.main, ["--model", "paligemma2-3b-pt224"], capsys, "did you mean")
    refused(memory.main, ["--batch-size", "many"], capsys, "invalid int value: 'many'")
    refused(bench.main, ["--repeats", "0"], capsys, "--repeats must be at least 1, not 0")
    refused(
        step_speed.main, ["--models", "bench,paligemma-3b-224"], capsys, "did you mean", "'bench'"
    )
    refused(step_speed.main, ["--models", " , "], capsys, "--models: name at least one")
    refused(
        pretrain.main,
        ["--rescore", "--out", str(tmp_path / "none")],
        capsys,
        str(tmp_path / "none"),
    )
    refused(pair_probe.main, ["--assets", str(tmp_path)], capsys, "config.json is missing")

    def diverges(settings):
        raise FloatingPointError("loss nan at step 12: lower --learning-rate")

    monkeypatch.setattr(vision_probe, "probe", diverges)
    refused(vision_probe.main, [], capsys, "loss nan at step 12: lower --learning-rate")
    with pytest.raises(FloatingPointError):
        vision_probe.main(["--debug"])
