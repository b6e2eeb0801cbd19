"""Describing a `Scene` in words: the short caption, the long paragraph, the object list."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from solutions.scenes.world import COUNT_WORDS, POSITIONS, Scene, Shape, cell_groups


def _noun_phrase(shape: Shape) -> str:
    return f"a {shape.size} {shape.colour} {shape.kind}"


def _join(phrases: Sequence[str]) -> str:
    """Lists phrases the English way: x / x and y / x, y and z."""
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def short_caption(scene: Scene) -> str:
    """One lowercase phrase naming every shape in reading order, e.g.
    "a large red circle, a small blue square and a small green star"."""
    return _join([_noun_phrase(s) for s in scene.shapes])


def _cell_sentence(group: Sequence[Shape], index: int) -> str:
    """One sentence about one grid cell; even and odd cells take the two word orders."""
    where = POSITIONS[group[0].position]
    on_top = f" with {_noun_phrase(group[1])} on top of it" if len(group) == 2 else ""
    if index % 2 == 0:
        return f"{where} there is {_noun_phrase(group[0])}{on_top}."
    return f"{_noun_phrase(group[0])} sits {where}{on_top}."


def _relation_sentence(scene: Scene) -> str | None:
    """Where the first two shapes in different cells stand to each other, when their colour and
    kind alone name them without ambiguity ("the red circle is above the blue star")."""
    names = Counter((s.colour, s.kind) for s in scene.shapes)
    named = [g[0] for g in cell_groups(scene) if names[(g[0].colour, g[0].kind)] == 1]
    if len(named) < 2:
        return None
    first, second = named[:2]
    order = list(POSITIONS)
    same_row = order.index(first.position) // 3 == order.index(second.position) // 3
    relation = "to the left of" if same_row else "above"  # reading order puts `first` earlier
    return f"the {first.colour} {first.kind} is {relation} the {second.colour} {second.kind}."


def long_caption(scene: Scene) -> str:
    """Two to five sentences: how many shapes on which background, one sentence per grid cell
    (size, colour, kind, position), and a spatial relation when there is room for it."""
    n = len(scene.shapes)
    background = scene.background
    sentences = [
        f"{COUNT_WORDS[n - 1]} shape{'s sit' if n > 1 else ' sits'} on a "
        f"{background.pattern} {background.tone} background."
    ]
    sentences += [_cell_sentence(g, i) for i, g in enumerate(cell_groups(scene))]
    relation = _relation_sentence(scene)
    if relation and len(sentences) < 5:
        sentences.append(relation)
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def objects_text(scene: Scene) -> str:
    """Every shape with its position, for scoring: "large red circle in the top left; ..."."""
    return "; ".join(f"{s.size} {s.colour} {s.kind} {POSITIONS[s.position]}" for s in scene.shapes)


CAPTIONS = {"short": short_caption, "long": long_caption}
