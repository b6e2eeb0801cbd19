"""How fast the captioning app answers, in two numbers.

    python -m capstone.tools.app_timing                   # the shipped tiny model
    python -m capstone.tools.app_timing --assets /tmp/quick --repeats 20

(a) seconds to caption one 224x224 image once the model is warm (the median
    of --repeats captions; preprocessing, decoding and detokenizing), target
    at most 0.5 s;
(b) seconds from process start to the first caption: a fresh Python process
    does what the app does when it starts (imports, loads the model, compiles
    decode with a warm-up, captions one image), timed from its launch to the
    line it prints, target at most 30 s.

Both decode greedily up to `solutions.app.DEFAULT_MAX_LEN` tokens, as the app
does by default. Prints one JSON object.
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


def warm_caption_seconds(assets: pathlib.Path | None, repeats: int) -> list[float]:
    """Seconds of each of `repeats` captions of one 224x224 scene, after a warm-up."""
    from solutions import app

    captioner = app.load_captioner(app.ModelSource("tiny (shipped)"), assets)
    captioner.warm_up()
    image = app.gallery(1, size=224)[0].image
    return [captioner.caption([image])[0].seconds for _ in range(repeats)]


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
    first = seconds_to_first_caption(settings.assets)
    warm = warm_caption_seconds(settings.assets, settings.repeats)
    report = {
        "warm_caption_s_median": round(statistics.median(warm), 3),
        "warm_caption_s_max": round(max(warm), 3),
        "warm_target_s": TARGET_WARM_S,
        "start_to_first_caption_s": round(first, 1),
        "first_caption_target_s": TARGET_FIRST_CAPTION_S,
        "within_targets": statistics.median(warm) <= TARGET_WARM_S
        and first <= TARGET_FIRST_CAPTION_S,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
