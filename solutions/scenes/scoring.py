"""Reading shapes back out of a caption (a model's imperfect one too) and scoring it
against a scene: object F1 and F1 per attribute."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from solutions.scenes.world import (
    ATTRIBUTES,
    COLOURS,
    KINDS,
    OBJECT_FIELDS,
    POSITIONS,
    SIZES,
    Scene,
)


class ParsedObject(NamedTuple):
    """One shape as a caption names it; `position` is None when the caption does not say."""

    size: str
    colour: str
    kind: str
    position: str | None = None


SYNONYMS = {"center": "centre", "gray": "grey", "big": "large", "little": "small"}
_POSITION_WORDS = {tuple(phrase.split()): cell for cell, phrase in POSITIONS.items()}


def _words(sentence: str) -> list[str]:
    return [SYNONYMS.get(w, w) for w in re.findall(r"[a-z]+", sentence.lower())]


def _find_positions(words: list[str]) -> list[tuple[int, str]]:
    """(word index, cell) of every position phrase such as "in the top left"."""
    found = []
    for start in range(len(words)):
        for phrase, cell in _POSITION_WORDS.items():
            if tuple(words[start : start + len(phrase)]) == phrase:
                found.append((start, cell))
    return found


def _parse_sentence(sentence: str) -> list[ParsedObject]:
    words = _words(sentence)
    positions = _find_positions(words)
    objects = []
    for i in range(len(words) - 2):
        size, colour, kind = words[i : i + 3]
        if size in SIZES and colour in COLOURS and kind in KINDS:
            # the nearest position phrase in the sentence, the earlier one on a tie
            nearest = min(positions, key=lambda p: (abs(p[0] - i), p[0]), default=(0, None))
            objects.append(ParsedObject(size, colour, kind, nearest[1]))
    return objects


def parse_caption(text: str) -> list[ParsedObject]:
    """The shapes a caption names (a multiset, in the caption's order), read from either style.

    A shape counts only when size, colour and kind come together ("large red
    circle"); a position phrase in the same sentence gives its cell. Unknown
    words are ignored, so a model's half-right caption still scores.
    """
    return [obj for sentence in re.split(r"[.;!?\n]", text) for obj in _parse_sentence(sentence)]


def scene_objects(scene: Scene) -> list[ParsedObject]:
    """The scene's shapes as `ParsedObject`s with positions, in reading order."""
    return [ParsedObject(s.size, s.colour, s.kind, s.position) for s in scene.shapes]


def _matched_f1(predicted: list[ParsedObject], truth: list[ParsedObject], fields: Sequence[str]):
    """(precision, recall, f1) of two lists of shapes that match on `fields` (ParsedObject
    names). Each true shape matches at most one predicted shape; both empty scores 1."""
    if not predicted and not truth:
        return 1.0, 1.0, 1.0

    def key(obj: ParsedObject) -> tuple:
        return tuple(getattr(obj, field) for field in fields)

    hits = sum((Counter(map(key, predicted)) & Counter(map(key, truth))).values())
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def _true_objects(reference: Scene | str) -> list[ParsedObject]:
    return scene_objects(reference) if isinstance(reference, Scene) else parse_caption(reference)


def object_f1(
    predicted_caption: str, reference: Scene | str, *, match_position: bool = False
) -> tuple[float, float, float]:
    """(precision, recall, f1) of the shapes a caption names against a scene or a caption.

    Shapes match on (size, colour, kind), and on position too with
    `match_position` (a caption without positions then matches nothing). Each
    reference shape matches at most one predicted shape. Both empty is a
    perfect score; otherwise an empty side scores 0.
    """
    fields = ATTRIBUTES if match_position else OBJECT_FIELDS
    return _matched_f1(parse_caption(predicted_caption), _true_objects(reference), fields)


def attribute_f1(predicted_caption: str, reference: Scene | str) -> dict[str, float]:
    """F1 of each attribute alone: {"size", "colour", "kind", "position"} -> float.

    Shapes match on that one attribute, so "colour" asks whether the caption
    names the right colours, as many times as the scene has them, whatever it
    says of their kinds. It tells which part of `object_f1` a model gets wrong.
    A caption without positions scores 0 on "position".
    """
    predicted, truth = parse_caption(predicted_caption), _true_objects(reference)
    return {field: _matched_f1(predicted, truth, (field,))[2] for field in ATTRIBUTES}
