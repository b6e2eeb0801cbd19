"""The graded tests fail on the wrong solutions a learner is likely to write.

Each wrong function below does what its lesson says not to do, and once passed every graded
test of its exercise. Put in place of the reference, it must now fail exactly the test that
checks the property the lesson teaches, with a teaching message, while the reference's other
behaviour still passes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import types

import jax
import jax.numpy as jnp
import pytest

from tests import grading


def chmod_after_writing(folder, username, key):
    """1.4 the usual way, then made private: others can read the key until the chmod."""
    if not username.strip() or not key.strip():
        raise ValueError("username and key must both be non-empty")
    folder = pathlib.Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "kaggle.json"
    path.write_text(json.dumps({"username": username, "key": key}))
    path.chmod(0o600)
    return path


def whole_file_at_once(path):
    """2.2 without chunks: a checkpoint of gigabytes held in memory at once."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def straight_onto_the_target(path, data):
    """2.3 without a temporary file. It encodes before it opens, so text that cannot be
    encoded still leaves the old file alone, but a crash midway leaves half a file."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _suffix_losses(params, batch, model, counted):
    """Each example's mean negative log-likelihood of text[:, 1:] over `counted`."""
    text = batch["text"]
    logits, _ = model.apply(
        {"params": params}, batch["image"], text[:, :-1], batch["mask_ar"][:, :-1], train=True
    )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, text[:, 1:, None], axis=-1)[..., 0]
    return (nll * counted).sum(axis=1), counted.sum(axis=1)


def mask_off_by_one(params, batch, *, model):
    """7.2 counting the tokens with mask_loss[:, :-1], one position early."""
    total, count = _suffix_losses(params, batch, model, batch["mask_loss"][:, :-1])
    return (total / jnp.maximum(count, 1)).mean()


def zero_over_zero(params, batch, *, model):
    """7.2 dividing by the count as it is: 0 / 0 for an example with nothing to learn."""
    total, count = _suffix_losses(params, batch, model, batch["mask_loss"][:, 1:])
    return (total / count).mean()


def _failures(exercise: str, name: str, wrong) -> dict[str, str]:
    """{test name: message} of the graded tests of `exercise` that fail when `name` is
    `wrong` and every other function is the reference."""
    lesson = grading.parse_exercise_id(exercise)[0]
    module = grading.graded_test_module(lesson)
    reference = grading.load_solutions(grading.exercise_names(lesson), module.SOLUTIONS)
    impl = types.SimpleNamespace(**{**vars(reference), name: wrong})
    failed = {}
    for fn in grading.exercise_tests(exercise):
        try:
            grading.run_test(fn, impl)
        except AssertionError as err:
            failed[fn.__name__] = str(err)
    return failed


@pytest.mark.parametrize(
    ("exercise", "name", "wrong", "caught_by"),
    [
        pytest.param(
            "ex1_4",
            "write_kaggle_json",
            chmod_after_writing,
            "test_ex1_4_is_never_readable_by_others_not_even_briefly",
            marks=pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX"),
            id="1.4-chmod-after-writing",
        ),
        pytest.param(
            "ex2_2",
            "sha256_file",
            whole_file_at_once,
            "test_ex2_2_memory_stays_small_for_a_big_file",
            id="2.2-whole-file-at-once",
        ),
        pytest.param(
            "ex2_3",
            "write_atomic",
            straight_onto_the_target,
            "test_ex2_3_the_target_changes_only_by_a_rename",
            id="2.3-straight-onto-the-target",
        ),
    ],
)
def test_the_property_the_lesson_teaches_catches_it(exercise, name, wrong, caught_by):
    failed = _failures(exercise, name, wrong)
    assert list(failed) == [caught_by], (
        f"{wrong.__name__} as {name}: expected exactly {caught_by} to fail, "
        f"failed: {sorted(failed)}"
    )
    assert "Hint:" in failed[caught_by], failed[caught_by]


def test_an_off_by_one_loss_is_not_told_about_zero_division():
    failed = _failures("ex7_2", "loss_fn", mask_off_by_one)
    assert "test_ex7_2_matches_the_per_example_suffix_mean" in failed, sorted(failed)
    assert "text[:, 1:]" in failed["test_ex7_2_matches_the_per_example_suffix_mean"]
    for name, message in failed.items():
        assert "0 by 0" not in message and "NaN" not in message, (name, message)


def test_a_zero_over_zero_loss_is_told_about_it():
    failed = _failures("ex7_2", "loss_fn", zero_over_zero)
    assert list(failed) == ["test_ex7_2_an_example_without_suffix_counts_zero"], sorted(failed)
    assert "divides 0 by 0" in failed["test_ex7_2_an_example_without_suffix_counts_zero"]
