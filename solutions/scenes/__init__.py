"""The course's own captioning data: coloured shapes on a 3x3 grid, drawn and described.

Nothing can be downloaded, so the course makes a dataset that behaves like
big_vision's longcap100 (an image and a paragraph about it) from a seeded
generator. One `Scene` is sampled, then rendered and described in two styles:

    scene = sample_scene(9)
    render_scene(scene)   -> PIL.Image RGB [224, 224]
    short_caption(scene)  -> "a large pink triangle and a large purple cross"
    long_caption(scene)   -> "Two shapes sit on a plain black background. At the top there
                              is a large pink triangle. A large purple cross sits in the
                              bottom left. The pink triangle is above the purple cross."

`parse_caption` reads the objects back out of either style (and out of a
model's imperfect attempt), and `object_f1` scores a caption against a scene.

Compositional test split: the six (colour, kind) pairs in `HELD_OUT_PAIRS`
never appear in the train and val splits; every test scene holds at least one
of them, next to the other objects. Each colour and each kind still appears in
training, only never in that combination.

`write_dataset` writes longcap100's layout (`data_train90.jsonl`,
`data_val10.jsonl`, plus `data_test50.jsonl`, images under `images/`); the
command line does the same: `python -m solutions.scenes OUT_DIR --train 90`.

The parts, each with one job (everything is reachable as `scenes.<name>`):

    world.py     the vocabulary, `Scene`, `sample_scene`, the held-out pairs
    render.py    `render_scene`, `render_object_ids`
    captions.py  `short_caption`, `long_caption`, `objects_text`
    scoring.py   `parse_caption`, `object_f1`, `attribute_f1`
    dataset.py   `write_dataset`, `show_examples`, the command line
"""

from solutions.scenes.captions import (
    CAPTIONS,
    long_caption,
    objects_text,
    short_caption,
)
from solutions.scenes.dataset import (
    jsonl_name,
    show_examples,
    write_dataset,
)
from solutions.scenes.render import (
    render_object_ids,
    render_scene,
    shape_centre,
)
from solutions.scenes.scoring import (
    SYNONYMS,
    ParsedObject,
    attribute_f1,
    object_f1,
    parse_caption,
    scene_objects,
)
from solutions.scenes.world import (
    ALL_PAIRS,
    ATTRIBUTES,
    COLOURS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    JITTER,
    KINDS,
    MAX_ANGLE,
    MAX_SHAPES,
    OBJECT_FIELDS,
    PATTERNS,
    POSITIONS,
    SIZES,
    SPLITS,
    STACK_PROBABILITY,
    SUPERSAMPLE,
    TONES,
    TRAIN_PAIRS,
    Background,
    Scene,
    Shape,
    cell_groups,
    example_seed,
    sample_scene,
    split_scenes,
)

__all__ = [
    "ALL_PAIRS",
    "ATTRIBUTES",
    "CAPTIONS",
    "COLOURS",
    "COUNT_WORDS",
    "HELD_OUT_PAIRS",
    "JITTER",
    "KINDS",
    "MAX_ANGLE",
    "MAX_SHAPES",
    "OBJECT_FIELDS",
    "PATTERNS",
    "POSITIONS",
    "SIZES",
    "SPLITS",
    "STACK_PROBABILITY",
    "SUPERSAMPLE",
    "SYNONYMS",
    "TONES",
    "TRAIN_PAIRS",
    "Background",
    "ParsedObject",
    "Scene",
    "Shape",
    "attribute_f1",
    "cell_groups",
    "example_seed",
    "jsonl_name",
    "long_caption",
    "object_f1",
    "objects_text",
    "parse_caption",
    "render_object_ids",
    "render_scene",
    "sample_scene",
    "scene_objects",
    "shape_centre",
    "short_caption",
    "show_examples",
    "split_scenes",
    "write_dataset",
]
