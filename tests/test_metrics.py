"""Caption metrics: CIDEr-D worked by hand, cross-checked against pycocoevalcap, object F1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from solutions.metrics import (
    caption_report,
    cider,
    ngram_counts,
    repeats_a_word,
    tokenize_caption,
)
from solutions.scenes import COLOURS, long_caption, objects_text, sample_scene, short_caption

LOG2 = math.log(2)
# Two examples whose references share no word: every reference word has df = 1 of N = 2,
# so every word weighs tf x log 2, and an unseen word weighs log 2 as well.
TWO_REFERENCES = [["red circle"], ["blue square"]]


# ----------------------------------------------------------------------------- tokenization


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize_caption("A large Red circle, at the top.") == [
        "a",
        "large",
        "red",
        "circle",
        "at",
        "the",
        "top",
    ]
    assert tokenize_caption("Don't  split\tleft-hand 3.5") == ["dont", "split", "lefthand", "35"]
    assert tokenize_caption(" ... ") == []


def test_tokenize_leaves_tokenized_text_alone():
    text = "two shapes sit on a plain black background"
    assert tokenize_caption(text) == text.split()


def test_ngram_counts():
    unigrams, bigrams = ngram_counts(["a", "b", "a"], 2)
    assert unigrams == {("a",): 2, ("b",): 1}
    assert bigrams == {("a", "b"): 1, ("b", "a"): 1}
    assert ngram_counts(["a"], 3) == [{("a",): 1}, {}, {}]


# ----------------------------------------------------------------------------- worked examples


def test_partial_overlap_by_hand():
    # pred "red square" vs ref "red circle": weights log 2 each, overlap log2^2 (red),
    # norms sqrt(2) log 2 each, so cosine 1/2, equal lengths: 10 x 1/2 = 5.
    score, per_example = cider(["red square", "blue square"], TWO_REFERENCES, n=1)
    np.testing.assert_allclose(per_example, [5.0, 10.0], rtol=1e-12)
    assert score == pytest.approx(7.5, rel=1e-12)


def test_unseen_word_and_length_penalty_by_hand():
    # "the" is in no reference: it weighs log 2 too. Overlap 2 log2^2, norms sqrt(3) log 2 and
    # sqrt(2) log 2; one word longer than the reference: penalty exp(-1 / (2 x 6^2)).
    _, per_example = cider(["the red circle", "blue square"], TWO_REFERENCES, n=1)
    assert per_example[0] == pytest.approx(10 * 2 / math.sqrt(6) * math.exp(-1 / 72), rel=1e-12)


def test_repeated_word_is_clipped_by_hand():
    # pred weights red 2 log 2, circle log 2: clipped overlap min(2, 1) + 1 = 2 (log2^2),
    # where the plain dot product would give 3. Norms sqrt(5) log 2 and sqrt(2) log 2.
    _, per_example = cider(["red red circle", "blue square"], TWO_REFERENCES, n=1)
    assert per_example[0] == pytest.approx(10 * 2 / math.sqrt(10) * math.exp(-1 / 72), rel=1e-12)


def test_identical_prediction_scores_the_maximum():
    captions = [
        "a large red circle in the top left",
        "a small blue square sits at the bottom",
        "two green stars on a striped white background",
    ]
    score, per_example = cider(captions, [[c] for c in captions])
    np.testing.assert_allclose(per_example, 10.0, rtol=1e-12)
    assert score == pytest.approx(10.0, rel=1e-12)
    _, changed = cider(
        ["a large red circle in the top right"] + captions[1:], [[c] for c in captions]
    )
    assert 0 < changed[0] < 10


def test_empty_prediction_scores_zero():
    _, per_example = cider(["", "blue square"], TWO_REFERENCES)
    assert per_example[0] == 0.0


def test_words_every_example_uses_carry_no_weight():
    # "a" is in the references of both examples: df = N, weight log(2 / 2) = 0.
    _, per_example = cider(["a", "a"], [["a red circle"], ["a blue square"]])
    np.testing.assert_array_equal(per_example, [0.0, 0.0])


def test_one_example_alone_scores_zero():
    # With N = 1 every reference n-gram has df = N: CIDEr needs a set to tell what is rare.
    score, _ = cider(["a red circle"], [["a red circle"]])
    assert score == 0.0


def test_example_order_does_not_matter():
    predictions = ["red square", "blue square", "a green star"]
    references = [["red circle"], ["blue square", "a blue box"], ["a green star on the left"]]
    _, per_example = cider(predictions, references)
    order = [2, 0, 1]
    _, shuffled = cider([predictions[i] for i in order], [references[i] for i in order])
    np.testing.assert_allclose(shuffled, per_example[order], rtol=1e-12)


# ------------------------------------------------------------------------ against COCO's scorer


def _perturb(caption: str, how: int, rng: np.random.Generator, other: str) -> str:
    """A prediction that is right, half right or wrong in one of several ways."""
    words = tokenize_caption(caption)
    if how == 0:
        return caption
    if how == 1:  # a word dropped
        del words[int(rng.integers(len(words)))]
    elif how == 2:  # colours swapped for others
        words = [str(rng.choice(list(COLOURS))) if w in COLOURS else w for w in words]
    elif how == 3:  # word order shuffled
        words = list(rng.permutation(words))
    elif how == 4:  # a word said three times, so clipping matters
        i = int(rng.integers(len(words)))
        words[i:i] = [words[i]] * 2
    elif how == 5:  # cut short
        words = words[: max(1, len(words) // 3)]
    elif how == 6:  # another image's caption
        return other
    elif how == 7:
        return ""
    return " ".join(words)


def _caption_groups(n_groups: int = 30) -> tuple[list[str], list[list[str]]]:
    """Predictions and 1-3 references per example from seeded scenes, pre-tokenized."""
    rng = np.random.default_rng(0)
    scene_list = [sample_scene(seed, split="test" if seed % 3 else "train") for seed in range(40)]
    predictions, references = [], []
    for i in range(n_groups):
        scene = scene_list[i]
        refs = [long_caption(scene), short_caption(scene), objects_text(scene)][: 1 + i % 3]
        source = short_caption(scene) if i % 2 else long_caption(scene)
        prediction = _perturb(source, i % 8, rng, other=short_caption(scene_list[i + 5]))
        predictions.append(" ".join(tokenize_caption(prediction)))
        references.append([" ".join(tokenize_caption(r)) for r in refs])
    return predictions, references


def test_matches_pycocoevalcap():
    scorer_module = pytest.importorskip(
        "pycocoevalcap.cider.cider_scorer",
        reason="the COCO cross-check needs pycocoevalcap==1.2 (dev extra)",
    )
    predictions, references = _caption_groups()
    coco = scorer_module.CiderScorer(n=4, sigma=6.0)
    for prediction, refs in zip(predictions, references, strict=True):
        coco += (prediction, refs)
    coco_score, coco_per_example = coco.compute_score()

    score, per_example = cider(predictions, references)
    np.testing.assert_allclose(per_example, coco_per_example, rtol=0, atol=1e-6)
    assert score == pytest.approx(coco_score, abs=1e-6)
    assert score == pytest.approx(per_example.mean(), rel=1e-12)
    # The set spans the whole range, so agreement is not agreement on zeros.
    assert per_example.min() == 0.0 and per_example.max() > 9 and len(set(per_example)) > 20


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("predictions", "references", "error", "message"),
    [
        (["a", "b"], [["a"]], ValueError, "2 predictions but 1 reference lists"),
        ([], [], ValueError, "no examples"),
        (["a", "b"], [["a"], []], ValueError, r"references\[1\] is empty"),
        (["a", "b"], [["a"], "b c"], TypeError, r"references\[1\] is a string; wrap it in a list"),
        (["a", "b"], [["a"], ["b", " , "]], ValueError, r"references\[1\]\[1\] = ' , ' has no"),
        (["a", None], [["a"], ["b"]], TypeError, r"predictions\[1\] is NoneType"),
        (["a", "b"], [["a"], [None]], TypeError, r"references\[1\]\[0\] is NoneType"),
    ],
)
def test_bad_input_is_named(predictions, references, error, message):
    with pytest.raises(error, match=message):
        cider(predictions, references)


# ----------------------------------------------------------------------------- the report


def test_caption_report_with_scenes():
    scene_list = [sample_scene(seed) for seed in range(6)]
    references = [[long_caption(s)] for s in scene_list]

    short = caption_report([short_caption(s) for s in scene_list], references, scene_list)
    # Short captions name every shape but no position.
    assert short["object_f1"] == 1.0 and short["object_f1_position"] == 0.0
    assert short["attribute_f1"] == {"size": 1.0, "colour": 1.0, "kind": 1.0, "position": 0.0}
    assert short["cider"] == cider([short_caption(s) for s in scene_list], references)[0]

    exact = caption_report([r[0] for r in references], references, scenes=scene_list)
    assert exact == {
        "n_examples": 6,
        "cider": pytest.approx(10.0),
        "repeating": 0,
        "object_f1": 1.0,
        "object_f1_position": 1.0,
        "attribute_f1": {"size": 1.0, "colour": 1.0, "kind": 1.0, "position": 1.0},
    }
    json.dumps(exact)  # plain floats, ready for metrics.json


def test_caption_report_without_scenes():
    report = caption_report(["red square", "blue square"], TWO_REFERENCES)
    assert report == {
        "n_examples": 2,
        "cider": pytest.approx(cider(["red square", "blue square"], TWO_REFERENCES)[0]),
        "repeating": 0,
    }


def test_repeated_words_are_counted():
    assert repeats_a_word("the green triangle is above the orange orange orange heart")
    assert repeats_a_word("A red, red; RED circle.")  # punctuation and case do not hide it
    assert not repeats_a_word("the orange orange heart is left of the orange star")
    assert not repeats_a_word("") and not repeats_a_word("orange orange")
    report = caption_report(["red red red square", "blue square"], TWO_REFERENCES)
    assert report["repeating"] == 1


def test_caption_report_checks_scene_count():
    with pytest.raises(ValueError, match="2 predictions but 1 scenes"):
        caption_report(["red square", "blue square"], TWO_REFERENCES, [sample_scene(0)])
