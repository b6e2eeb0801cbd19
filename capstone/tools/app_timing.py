"""How fast the captioning app answers: per caption, at start, as sliders move, per batch.

    python -m capstone.tools.app_timing                   # the shipped tiny model
    python -m capstone.tools.app_timing --assets /tmp/quick --repeats 20

(a) seconds to caption one 224x224 image once the model is warm (the median
    of --repeats captions; preprocessing, decoding and detokenizing), target
    at most 0.5 s;
(b) seconds from process start to the first caption: a fresh Python process
    does what the app does when it starts (imports, loads the model, compiles
    decode with a warm-up, captions one image), timed from its launch to the
    line it prints, target at most 30 s;
(c) what moving the sampling sliders costs once warm: captions with new
    temperatures, top-k and top-p, the compilations they caused (0: they are
    traced values of the one compiled decoder) and the seconds of each;
(d) seconds to caption 60 validation scenes in batches of 10, as the demo's
    evaluation does (prompts of 80 tokens, up to 72 new ones), the first time
    (compiling) and warm.

(a), (b) and (d) decode greedily, (a) and (b) up to `solutions.app.DEFAULT_MAX_LEN`
tokens as the app does by default. Prints one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import subprocess
import sys
import time

from capstone import cli

TARGET_WARM_S = 0.5
TARGET_FIRST_CAPTION_S = 30.0
READY = "first caption:"
# (temperature, top_k, top_p) as a user might set the sliders, one after another.
SLIDER_MOVES = ((0.7, 0, 1.0), (1.3, 0, 1.0), (1.0, 40, 1.0), (1.0, 10, 0.9), (0.5, 0, 0.8))
BATCH_IMAGES, BATCH_SIZE, BATCH_SEQLEN, BATCH_MAX_LEN = 60, 10, 80, 72


def first_caption(assets: pathlib.Path | None) -> None:
    """The child process: start like the app, print one caption, exit."""
    from solutions import app

    captioner = app.load_captioner(app.ModelSource("tiny (shipped)"), assets)
    captioner.warm_up()
    [caption] = captioner.caption([app.gallery(1)[0].image])
    print(READY, json.dumps(caption.text), flush=True)


def seconds_to_first_caption(assets: pathlib.Path | None) -> float:
    """Launches `first_caption` in a new interpreter; seconds until it reports."""
    command = [sys.executable, "-m", "capstone.tools.app_timing", "--first-caption"]
    if assets is not None:
        command += ["--assets", str(assets)]
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:
            if line.startswith(READY):
                elapsed = time.perf_counter() - start
                break
        else:
            raise RuntimeError(f"{' '.join(command)} ended (code {child.wait()}) without a caption")
    return elapsed


def warm_caption_seconds(captioner, repeats: int) -> list[float]:
    """Seconds of each of `repeats` captions of one 224x224 scene, after a warm-up."""
    from solutions import app

    image = app.gallery(1, size=224)[0].image
    return [captioner.caption([image])[0].seconds for _ in range(repeats)]


def slider_moves(captioner) -> dict:
    """Captions one scene with each of `SLIDER_MOVES`, counting the compilations."""
    import jax

    from solutions import app

    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    image = app.gallery(1, size=224)[0].image
    seconds = []
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        for move in SLIDER_MOVES:
            sampler = app.sampler_from_controls("sampling", *move)
            seconds.append(round(captioner.caption([image], sampler=sampler)[0].seconds, 3))
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    settings = [f"temperature={t} top_k={k} top_p={p}" for t, k, p in SLIDER_MOVES]
    return {"settings": settings, "compilations": len(compiles), "caption_s": seconds}


def batch_captioning_seconds(captioner) -> dict:
    """Seconds to caption `BATCH_IMAGES` validation scenes as the demo's evaluation does."""
    from solutions import app
    from solutions.evaluate import make_predictions
    from solutions.preprocess import postprocess_tokens, preprocess_image, preprocess_tokens

    text, mask_ar, _, mask_input = preprocess_tokens(
        app.DEFAULT_PREFIX, None, BATCH_SEQLEN, tokenizer=captioner.tokenizer
    )
    prompt = {"text": text, "mask_ar": mask_ar, "mask_input": mask_input}
    examples = [
        {"image": preprocess_image(scene.image, captioner.resolution), **prompt}
        for scene in app.gallery(BATCH_IMAGES)
    ]

    def caption_all() -> float:
        start = time.perf_counter()
        make_predictions(
            captioner.params,
            examples,
            model=captioner.model,
            batch_size=BATCH_SIZE,
            max_decode_len=BATCH_MAX_LEN,
            postprocess=lambda row: postprocess_tokens(row, tokenizer=captioner.tokenizer),
            progress=False,
        )
        return time.perf_counter() - start

    first = caption_all()
    warm = statistics.median(caption_all() for _ in range(3))
    return {"images": BATCH_IMAGES, "first_s": round(first, 2), "warm_s": round(warm, 3)}


@dataclasses.dataclass
class Settings:
    """What is timed."""

    assets: pathlib.Path | None = cli.setting(None, "tiny model folder (default: the shipped one)")
    repeats: int = cli.setting(10, "warm captions to time", least=1)
    first_caption: bool = cli.setting(False, hidden=True)  # the child process's role


@cli.command
def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    settings, _ = cli.parse_settings(parser, Settings, argv)
    if settings.first_caption:
        first_caption(settings.assets)
        return 0
    from solutions import app

    first = seconds_to_first_caption(settings.assets)
    captioner = app.load_captioner(app.ModelSource("tiny (shipped)"), settings.assets)
    captioner.warm_up()
    warm = warm_caption_seconds(captioner, settings.repeats)
    report = {
        "warm_caption_s_median": round(statistics.median(warm), 3),
        "warm_caption_s_max": round(max(warm), 3),
        "warm_target_s": TARGET_WARM_S,
        "start_to_first_caption_s": round(first, 1),
        "first_caption_target_s": TARGET_FIRST_CAPTION_S,
        "within_targets": statistics.median(warm) <= TARGET_WARM_S
        and first <= TARGET_FIRST_CAPTION_S,
        "slider_moves": slider_moves(captioner),
        "batch_captioning": batch_captioning_seconds(captioner),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
