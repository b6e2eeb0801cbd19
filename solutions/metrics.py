"""Caption metrics (lesson 8): CIDEr-D, and object F1 on the shapes dataset.

CIDEr-D (Vedantam, Zitnick and Parikh, 2015) asks how much a predicted caption
says what the references say, weighting words and phrases by how rare they
are across the evaluated set:

    for each n-gram order n = 1..4:
        g(s)   = tf-idf vector of sentence s: count of each n-gram in s
                 x log(N / df), df = how many of the N examples have it in a reference
        sim_n  = mean over references r of
                 sum_g min(g_pred, g_r) * g_r / (|g_pred| |g_r|)        clipped cosine
                 x exp(-(len_pred - len_r)^2 / (2 sigma^2))             length penalty
    CIDEr-D(example) = 10 x mean_n sim_n                                in [0, 10]
    CIDEr-D(set)     = mean over examples

An n-gram the references never use gets df = 1, the rarest weight; it can only
add to |g_pred| and so lowers the score. With one example every reference
n-gram has df = N, weight 0, and the score is 0: CIDEr needs a set to know what
is rare.

The numbers match the COCO caption evaluation's `CiderScorer` (pycocoevalcap
1.2) on the same tokens; `tests/test_metrics.py` checks it to 1e-6.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from solutions import scenes as scenes_lib

__all__ = ["caption_report", "cider", "ngram_counts", "repeats_a_word", "tokenize_caption"]

CIDER_SCALE = 10.0  # the COCO evaluation reports 10 x the mean similarity
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]")


def tokenize_caption(text: str) -> list[str]:
    """Lowercased words, after deleting every character that is neither a word character
    (Unicode letter, digit, underscore) nor whitespace.

        "A large red circle, at the top." -> ["a", "large", "red", "circle", "at", "the", "top"]

    COCO tokenizes with Stanford's Java PTBTokenizer and then drops punctuation
    tokens. Both agree on plain captions like the course's; they differ where
    punctuation sits inside a word: PTB splits "don't" into "do n't" and keeps
    "left-hand" and "3.5" whole, while this deletes the marks ("dont",
    "lefthand", "35"). The same text always gets the same tokens, so scores
    compare fairly within the course; for a number to set next to a paper's,
    tokenize with PTB and pass the tokens joined by spaces (they pass through
    unchanged).
    """
    return _NOT_WORD_OR_SPACE.sub("", text.lower()).split()


def ngram_counts(tokens: Sequence[str], n: int = 4) -> list[Counter]:
    """Counts of the n-grams of each order: element k-1 maps k-word tuples to counts.

    ngram_counts(["a", "b", "a"], 2) -> [{("a",): 2, ("b",): 1}, {("a", "b"): 1, ("b", "a"): 1}]
    """
    return [
        Counter(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
        for k in range(1, n + 1)
    ]


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raises a ValueError/TypeError that names the bad example and the fix."""
    if len(predictions) != len(references):
        raise ValueError(
            f"cider: {len(predictions)} predictions but {len(references)} reference lists; "
            "pass one list of reference captions per prediction, in the same order"
        )
    if not predictions:
        raise ValueError("cider: no examples; CIDEr needs at least one prediction")
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(prediction, str):
            raise TypeError(f"cider: predictions[{i}] is {type(prediction).__name__}, not str")
        if isinstance(refs, str):
            raise TypeError(
                f"cider: references[{i}] is a string; wrap it in a list: [{refs[:40]!r}, ...]"
            )
        if len(refs) == 0:
            raise ValueError(f"cider: references[{i}] is empty; every example needs a reference")
        for j, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"cider: references[{i}][{j}] is {type(ref).__name__}, not str")
            if not tokenize_caption(ref):
                raise ValueError(
                    f"cider: references[{i}][{j}] = {ref!r} has no words; fix or drop that caption"
                )


def _document_frequency(reference_counts: list[list[list[Counter]]]) -> Counter:
    """How many examples use each n-gram in at least one of their references."""
    frequency = Counter()
    for refs in reference_counts:
        frequency.update({gram for ref in refs for order in ref for gram in order})
    return frequency


def _tfidf(counts: Counter, frequency: Counter, log_n: float) -> dict[tuple, float]:
    """The tf-idf weight of each n-gram: count x log(N / max(df, 1))."""
    return {gram: tf * (log_n - math.log(max(frequency[gram], 1))) for gram, tf in counts.items()}


def _clipped_cosine(pred: dict[tuple, float], ref: dict[tuple, float]) -> float:
    """Cosine similarity where a predicted weight counts no more than the reference's
    (saying "red red red" earns no more than the reference's one "red"); 0 if either is 0."""
    overlap = sum(
        min(weight, ref.get(gram, 0.0)) * ref.get(gram, 0.0) for gram, weight in pred.items()
    )
    norms = _norm(pred) * _norm(ref)
    return overlap / norms if norms else 0.0


def _norm(vector: dict[tuple, float]) -> float:
    return math.sqrt(sum(weight * weight for weight in vector.values()))


def cider(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, np.ndarray]:
    """CIDEr-D of predicted captions against reference captions, as the COCO evaluation scores it.

    Args:
      predictions: one caption per example, [N] strings (an empty one scores 0).
      references: one or more reference captions per example, `[N][R_i]` strings.
      n: the longest n-gram order; 4 as in COCO.
      sigma: width of the Gaussian length penalty, in words; 6 as in COCO.

    Returns:
      (score, per_example): the mean over examples, and float64[N] with each
      example's score in [0, 10]. A prediction equal to all its references
      scores 10, unless one n-gram order carries no weight (fewer than n words,
      or only n-grams that every example's references use). Document
      frequencies come from the references of these N examples only.

    Captions are tokenized with `tokenize_caption`. The length penalty uses
    word counts; pycocoevalcap counts bigrams instead, which gives the same
    scores for n >= 2 but no penalty at all for n = 1.
    """
    _check_inputs(predictions, references)
    prediction_counts = [ngram_counts(tokenize_caption(p), n) for p in predictions]
    reference_counts = [[ngram_counts(tokenize_caption(r), n) for r in refs] for refs in references]
    frequency = _document_frequency(reference_counts)
    log_n = math.log(len(predictions))

    def vectors(counts: list[Counter]) -> list[dict[tuple, float]]:
        return [_tfidf(order, frequency, log_n) for order in counts]

    per_example = np.zeros(len(predictions))
    for i, (pred, refs) in enumerate(zip(prediction_counts, reference_counts, strict=True)):
        pred_vectors, pred_length = vectors(pred), sum(pred[0].values())
        similarity = 0.0
        for ref in refs:
            penalty = math.exp(-((pred_length - sum(ref[0].values())) ** 2) / (2 * sigma**2))
            cosines = [
                _clipped_cosine(p, r) for p, r in zip(pred_vectors, vectors(ref), strict=True)
            ]
            similarity += penalty * sum(cosines) / n
        per_example[i] = CIDER_SCALE * similarity / len(refs)
    return float(per_example.mean()), per_example


def repeats_a_word(caption: str, times: int = 3) -> bool:
    """Whether some word comes `times` times in a row ("the orange orange orange heart"):
    the loop a captioner falls into when it no longer knows what comes next."""
    words = tokenize_caption(caption)
    return any(len(set(words[i : i + times])) == 1 for i in range(len(words) - times + 1))


def caption_report(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    scenes: Sequence[scenes_lib.Scene] | None = None,
) -> dict:
    """The numbers of a captioning run, ready for metrics.json.

    Returns {"n_examples", "cider", "repeating": how many predictions repeat a
    word three times in a row (`repeats_a_word`)} and, when the true `scenes` of the examples
    are given ([N] `Scene`s), the mean object F1 of the predictions against them:
    "object_f1" (size, colour and kind must match), "object_f1_position"
    (the grid cell too), and "attribute_f1": {"size", "colour", "kind",
    "position"} -> the mean F1 of each attribute alone, which says where
    object_f1 is lost. See `solutions.scenes.object_f1` and `attribute_f1`.
    """
    score, _ = cider(predictions, references)
    report = {
        "n_examples": len(predictions),
        "cider": score,
        "repeating": sum(repeats_a_word(p) for p in predictions),
    }
    if scenes is not None:
        if len(scenes) != len(predictions):
            raise ValueError(
                f"caption_report: {len(predictions)} predictions but {len(scenes)} scenes; "
                "pass the scene of each example, in the same order, or scenes=None"
            )
        for key, match_position in (("object_f1", False), ("object_f1_position", True)):
            f1 = [
                scenes_lib.object_f1(p, s, match_position=match_position)[2]
                for p, s in zip(predictions, scenes, strict=True)
            ]
            report[key] = float(np.mean(f1))
        per_example = [
            scenes_lib.attribute_f1(p, s) for p, s in zip(predictions, scenes, strict=True)
        ]
        report["attribute_f1"] = {
            name: float(np.mean([scores[name] for scores in per_example]))
            for name in scenes_lib.ATTRIBUTES
        }
    return report
