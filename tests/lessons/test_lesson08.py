"""Graded checks for lesson 8 (evaluation): one test per behaviour, named test_ex8_K_<what>."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.grading import expect_close, expect_equal, expect_true

LESSON = 8
SOLUTIONS = ("solutions.evaluate", "solutions.metrics")
pytestmark = pytest.mark.lesson8

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "lessons"
NEG_INF = -np.inf


# ----------------------------------------------------------------------------- 8.1 keep_top_k


def test_ex8_1_keeps_the_k_highest_of_each_row(impl):
    logits = jnp.asarray([[1.0, 5.0, 3.0, 2.0], [0.5, -1.0, 4.0, 0.0]], jnp.float32)
    want = np.asarray([[NEG_INF, 5.0, 3.0, NEG_INF], [0.5, NEG_INF, 4.0, NEG_INF]], np.float32)
    expect_close(
        impl.keep_top_k(logits, 2),
        want,
        what="keep_top_k(logits, 2)",
        hint="find each row's k-th highest logit (jax.lax.top_k) and set everything below it "
        "to -inf with jnp.where",
        atol=0,
        rtol=0,
    )


def test_ex8_1_ties_with_the_kth_stay(impl):
    logits = jnp.asarray([[2.0, 1.0, 2.0, 0.0]], jnp.float32)
    expect_close(
        impl.keep_top_k(logits, 1),
        np.asarray([[2.0, NEG_INF, 2.0, NEG_INF]], np.float32),
        what="keep_top_k([[2, 1, 2, 0]], 1)",
        hint="compare values, not positions: drop only logits strictly below the k-th highest",
        atol=0,
        rtol=0,
    )


def test_ex8_1_k_beyond_the_vocabulary_keeps_all(impl):
    logits = jnp.asarray([[0.3, -2.0, 1.5]], jnp.float32)
    expect_close(
        impl.keep_top_k(logits, 10),
        np.asarray(logits),
        what="keep_top_k of 3 logits with k = 10",
        hint="use min(k, vocabulary size) as k",
        atol=0,
        rtol=0,
    )


def test_ex8_1_runs_inside_jit(impl):
    logits = jnp.asarray([[1.0, 5.0, 3.0, 2.0]], jnp.float32)
    got = jax.jit(lambda x: impl.keep_top_k(x, 3))(logits)
    expect_close(
        got,
        np.asarray([[NEG_INF, 5.0, 3.0, 2.0]], np.float32),
        what="keep_top_k(logits, 3) under jax.jit",
        hint="decoding runs inside jit: use jax.numpy and jax.lax, not numpy",
        atol=0,
        rtol=0,
    )


# ----------------------------------------------------------------------------- 8.2 keep_top_p

# Four tokens, deliberately out of order: probabilities 0.05, 0.5, 0.15 and 0.3.
PROBS = np.asarray([0.05, 0.5, 0.15, 0.3])


def test_ex8_2_keeps_the_smallest_set_reaching_p(impl):
    # Ranked: 0.5 (mass above 0), 0.3 (above: 0.5), 0.15 (0.8), 0.05 (0.95). A token stays
    # when the mass above it is below p.
    kept_by_p = {0.4: [1], 0.6: [1, 3], 0.85: [1, 2, 3], 1.0: [0, 1, 2, 3]}
    logits = jnp.log(jnp.asarray([PROBS], jnp.float32))
    for p, kept in kept_by_p.items():
        got = np.asarray(impl.keep_top_p(logits, p))
        want = np.full((1, 4), NEG_INF, np.float32)
        want[0, kept] = np.log(PROBS[kept]).astype(np.float32)
        expect_close(
            got,
            want,
            what=f"keep_top_p of probabilities {PROBS.tolist()} with p = {p}",
            hint="sort descending, softmax, cumulative sum; keep a token while the mass of "
            "the tokens ranked above it is < p (the top one always stays)",
            atol=1e-6,
            rtol=1e-6,
        )


def test_ex8_2_rows_are_filtered_separately(impl):
    peaked = np.log([0.9, 0.04, 0.03, 0.03])
    flat = np.log([0.2, 0.3, 0.24, 0.26])
    logits = jnp.asarray(np.stack([peaked, flat]), jnp.float32)
    got = np.asarray(impl.keep_top_p(logits, 0.5))
    finite = np.isfinite(got)
    expect_equal(
        finite,
        np.asarray([[True, False, False, False], [False, True, False, True]]),
        what="tokens kept by keep_top_p(p=0.5) for a peaked row and a flat row",
        hint="sort and sum along the last axis only, then map the cutoff back to each row",
    )


def test_ex8_2_works_on_logits_of_any_scale(impl):
    # softmax(logits + c) = softmax(logits): the same tokens must stay.
    logits = jnp.asarray([np.log(PROBS) + 7.0], jnp.float32)
    got = jax.jit(lambda x: impl.keep_top_p(x, 0.6))(logits)
    expect_equal(
        np.isfinite(np.asarray(got)),
        np.asarray([[False, True, False, True]]),
        what="tokens kept by keep_top_p(p=0.6) of logits shifted by +7, under jax.jit",
        hint="turn logits into probabilities with jax.nn.softmax before summing",
    )


# ----------------------------------------------------------------------------- 8.3 tokenize_caption


def test_ex8_3_lowercases_and_drops_punctuation(impl):
    cases = {
        "A large Red circle, at the top.": ["a", "large", "red", "circle", "at", "the", "top"],
        "two  shapes\tsit\nhere": ["two", "shapes", "sit", "here"],
        "Don't stop: left-hand 3.5!": ["dont", "stop", "lefthand", "35"],
        "Café au lait": ["café", "au", "lait"],
        " ... ": [],
    }
    for text, want in cases.items():
        expect_equal(
            impl.tokenize_caption(text),
            want,
            what=f"tokenize_caption({text!r})",
            hint="lowercase, delete every character that is neither a word character nor "
            r"whitespace (re.sub(r'[^\w\s]', '', ...)), then split on whitespace",
        )


# ----------------------------------------------------------------------------- 8.4 ngram_counts


def test_ex8_4_counts_each_order(impl):
    expect_equal(
        impl.ngram_counts(["a", "b", "a", "b"], 3),
        [
            {("a",): 2, ("b",): 2},
            {("a", "b"): 2, ("b", "a"): 1},
            {("a", "b", "a"): 1, ("b", "a", "b"): 1},
        ],
        what='ngram_counts(["a", "b", "a", "b"], 3)',
        hint="element k-1 counts the k-word tuples tokens[i:i+k] for every start i",
    )


def test_ex8_4_short_sentences_have_empty_orders(impl):
    expect_equal(
        impl.ngram_counts(["a"], 3),
        [{("a",): 1}, {}, {}],
        what='ngram_counts(["a"], 3)',
        hint="a sentence of L words has no n-grams longer than L: that order is an empty Counter",
    )


def test_ex8_4_default_is_four_orders(impl):
    counts = impl.ngram_counts("the red circle sits in the centre".split())
    expect_equal(
        [sum(order.values()) for order in counts],
        [7, 6, 5, 4],
        what="number of n-grams of each order in a 7-word sentence with the default n",
        hint="n defaults to 4; a sentence of L words has L - k + 1 n-grams of order k",
    )


# ----------------------------------------------------------------------------- 8.5 cider

# Two examples whose references share no word: every reference word is used by 1 of the
# N = 2 examples, so it weighs (count) x log(2 / 1); so does a word no reference uses.
TWO = [["green star"], ["small hexagon"]]
LOG2 = math.log(2)


def test_ex8_5_partial_overlap_by_hand(impl):
    # "green hexagon" vs "green star": unigram weights log 2 each; they share "green", so the
    # cosine is log2^2 / (sqrt(2) log 2)^2 = 1/2; same length, no penalty: 10 x 1/2 = 5.
    score, per_example = impl.cider(["green hexagon", "small hexagon"], TWO, n=1)
    expect_close(
        per_example,
        np.asarray([5.0, 10.0]),
        what='per-example CIDEr of "green hexagon" and "small hexagon" (n=1)',
        hint="tf-idf vectors of words, cosine between prediction and reference, times 10",
        atol=1e-9,
        rtol=1e-9,
    )
    expect_close(
        score,
        7.5,
        what="the set's CIDEr: the mean over examples",
        hint="return (mean of per_example, per_example)",
        atol=1e-9,
        rtol=1e-9,
    )


def test_ex8_5_rare_words_weigh_more_by_hand(impl):
    # N = 3; "a" and "green" appear in two examples' references (weight log 3/2), the other
    # words in one (weight log 3). Prediction "a green hexagon" vs reference "a small hexagon".
    references = [["a green star"], ["a small hexagon"], ["one green square"]]
    common, rare = math.log(3 / 2), math.log(3)
    overlap = common**2 + rare**2  # "a" and "hexagon"
    cosine = overlap / math.sqrt((2 * common**2 + rare**2) * (common**2 + 2 * rare**2))
    _, per_example = impl.cider(
        ["a green star", "a green hexagon", "a red square"], references, n=1
    )
    expect_close(
        per_example[1],
        10 * cosine,
        what='CIDEr (n=1) of "a green hexagon" against "a small hexagon"',
        hint="weight = count x log(N / df), df = how many examples use the word in a reference",
        atol=1e-9,
        rtol=1e-9,
    )


def test_ex8_5_clips_repeats_and_penalises_length_by_hand(impl):
    # "green green star" vs "green star": green weighs 2 log 2 but earns at most the
    # reference's log 2, so the overlap is 2 log2^2 (not 3); norms sqrt(5) and sqrt(2) log 2;
    # one word too many: exp(-1 / (2 x 6^2)).
    _, per_example = impl.cider(["green green star", "small hexagon"], TWO, n=1)
    expect_close(
        per_example[0],
        10 * 2 / math.sqrt(10) * math.exp(-1 / 72),
        what='CIDEr (n=1) of "green green star" against "green star"',
        hint="overlap = sum of min(pred weight, ref weight) x ref weight; multiply by "
        "exp(-(len_pred - len_ref)^2 / (2 sigma^2)) with sigma = 6",
        atol=1e-9,
        rtol=1e-9,
    )


def test_ex8_5_matches_the_coco_evaluation(impl):
    # Scores computed by the COCO caption evaluation itself (see "about" in the file).
    stored = json.loads((DATA / "lesson08_cider_coco.json").read_text())
    score, per_example = impl.cider(stored["predictions"], stored["references"])
    expect_close(
        per_example,
        np.asarray(stored["per_example"]),
        what="per-example CIDEr-D (n=4, sigma=6) of 10 examples, against COCO's scorer",
        hint="mean over the n-gram orders 1..4 of the clipped cosine, averaged over each "
        "example's references, times 10; an empty prediction scores 0",
        atol=1e-6,
        rtol=0,
    )
    expect_close(
        score,
        stored["score"],
        what="CIDEr-D of the whole set",
        hint="the mean of the per-example scores",
        atol=1e-6,
        rtol=0,
    )


def test_ex8_5_one_example_alone_scores_zero(impl):
    score, per_example = impl.cider(["a red circle"], [["a red circle"]])
    expect_true(
        score == 0.0 and list(per_example) == [0.0],
        what="CIDEr of a single example is 0 (every n-gram has df = N, weight log 1 = 0)",
        hint="weights are log(N / df) with N the number of examples; a zero vector has cosine 0",
    )
