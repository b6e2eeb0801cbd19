"""The captioning app: `solutions/app.py` directly, then `capstone/app.py` through AppTest.

A quickly pretrained tiny model (a few steps: it writes junk, which is enough
to check the plumbing) is built once and shared by every test here.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import struct
import zlib

import jax
import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from capstone.factory import pretrain
from solutions import app, scenes
from solutions.configs import CHECKPOINTS
from solutions.evaluate import decode
from solutions.model import count_params, param_shapes
from solutions.params import load_params, save_params
from solutions.preprocess import postprocess_tokens, preprocess_image, preprocess_tokens

APP_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "capstone" / "app.py"
APP_TIMEOUT_S = 180  # the first run loads and compiles the model


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_assets")
    quick = pretrain.Settings(
        vision_steps=0, steps=3, batch_size=4, num_scenes=12, num_eval=4, eval_every=1000
    )
    pretrain.pretrain(folder, quick)
    return folder


@pytest.fixture(scope="session")
def captioner(assets):
    loaded = app.load_captioner(app.ModelSource("tiny (shipped)"), assets)
    loaded.warm_up()
    return loaded


@pytest.fixture
def app_env(assets, tmp_path, monkeypatch):
    """The page's environment: the quick assets, an empty runs folder, no real checkpoints."""
    monkeypatch.setenv(app.TINY_ASSETS_ENV, str(assets))
    monkeypatch.setenv(app.RUNS_DIR_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv("PALIGEMMA_CHECKPOINT_DIR", str(tmp_path / "real"))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    return tmp_path


# --------------------------------------------------------------------------- test images


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def red_png() -> bytes:
    return encoded(Image.new("RGB", (48, 32), (220, 20, 20)), "PNG")


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    """A valid JPEG header over half of its pixel data."""
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


def cmyk_jpeg() -> bytes:
    return encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)


def grey16_png() -> bytes:
    """A 16-bit greyscale ramp 0..65535, left to right."""
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    return encoded(Image.fromarray(np.tile(ramp, (8, 1))), "PNG")


def animated_gif() -> bytes:
    """Two frames: red, then blue."""
    red, blue = (Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    return encoded(red, "GIF", save_all=True, append_images=[blue])


# --------------------------------------------------------------------------- read_upload


@pytest.mark.parametrize(
    "image_format, options, tolerance",
    [("PNG", {}, 0), ("JPEG", {"quality": 95}, 3), ("WEBP", {"lossless": True}, 0), ("GIF", {}, 0)],
)
def test_accepted_formats_read_as_rgb(image_format, options, tolerance):
    source = Image.new("RGB", (40, 24), (200, 40, 90))
    image = app.read_upload(encoded(source, image_format, **options), f"x.{image_format}")
    assert image.mode == "RGB" and image.size == (40, 24)
    # One colour fits GIF's palette exactly; only JPEG's compression moves it.
    assert np.abs(np.asarray(image, int) - np.asarray(source, int)).max() <= tolerance


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA"])
def test_other_png_modes_become_rgb_like_pillow_converts_them(mode):
    source = Image.new("RGBA", (8, 8), (30, 160, 220, 128)).convert(mode)
    image = app.read_upload(encoded(source, "PNG"), f"{mode}.png")
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(source.convert("RGB")))


def test_transparent_palette_keeps_the_stored_colour():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 1
    image = app.read_upload(encoded(palette, "PNG"), "p.png")
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_gif_gives_its_first_frame():
    image = app.read_upload(animated_gif(), "anim.gif")
    assert image.getpixel((8, 8)) == (255, 0, 0)


def test_multi_picture_jpeg_gives_its_first_picture():
    """Many phone cameras write MPO: a JPEG followed by more pictures."""
    first, second = (Image.new("RGB", (16, 8), c) for c in ((0, 0, 255), (255, 0, 0)))
    data = encoded(first, "MPO", save_all=True, append_images=[second])
    image = app.read_upload(data, "phone.jpg")
    assert image.size == (16, 8)
    assert np.abs(np.asarray(image, int)[4, 8] - (0, 0, 255)).max() <= 3


def test_cmyk_jpeg_becomes_rgb():
    image = app.read_upload(cmyk_jpeg(), "cmyk.jpg")
    expected = Image.new("CMYK", (1, 1), (0, 255, 255, 0)).convert("RGB").getpixel((0, 0))
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image, int)[16, 16] - expected).max() <= 3


def test_16_bit_png_is_scaled_not_clipped():
    image = app.read_upload(grey16_png(), "grey16.png")
    row = np.asarray(image)[0, :, 0].astype(int)
    ramp = np.linspace(0, 65535, 64).round()
    assert np.abs(row - ramp / 257).max() <= 0.5  # 65535 -> 255: each 8-bit step is 257
    assert row[0] == 0 and row[-1] == 255 and 0 < row[32] < 255


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = wide.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = app.read_upload(encoded(wide, "JPEG", exif=exif), "phone.jpg")
    assert image.size == (20, 40)


@pytest.mark.parametrize(
    "name, data, fix",
    [
        ("notes.png", b"plain text, not pixels", "convert it to PNG or JPEG"),
        ("empty.jpg", b"", "a JPEG, PNG, WEBP or GIF image is needed"),
        ("broken.jpg", truncated_jpeg(), "damaged"),
        ("huge.png", png_claiming(8000, 8000), "downscale it"),
        ("bomb.png", png_claiming(30000, 30000), "downscale it"),
        ("old.bmp", encoded(Image.new("RGB", (4, 4)), "BMP"), "convert it to PNG or JPEG"),
    ],
)
def test_bad_uploads_raise_one_error_naming_the_file_and_the_fix(name, data, fix):
    with pytest.raises(app.ImageInputError) as caught:
        app.read_upload(data, name)
    assert str(caught.value).startswith(name)
    assert fix in str(caught.value)


def test_pixel_limit_is_checked_before_decoding():
    data = red_png()
    with pytest.raises(app.ImageInputError, match="over the limit of 1,000"):
        app.read_upload(data, "red.png", max_pixels=1000)
    assert app.read_upload(data, "red.png", max_pixels=48 * 32).size == (48, 32)


# --------------------------------------------------------------------------- model sources


def test_missing_checkpoint_names_the_path_and_the_fix(assets, tmp_path):
    path = tmp_path / "runs" / "gone" / "checkpoint.npz"
    with pytest.raises(app.ModelSourceError) as caught:
        app.load_captioner(app.ModelSource("gone", "tiny", path), assets)
    assert str(path) in str(caught.value)
    assert "python -m capstone.finetune" in str(caught.value)


def test_damaged_checkpoint_names_the_path(assets, tmp_path):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(app.ModelSourceError) as caught:
        app.load_captioner(app.ModelSource("broken", "tiny", path), assets)
    assert str(path) in str(caught.value) and "save or copy it again" in str(caught.value)


def test_checkpoint_of_another_model_says_to_pick_its_architecture(assets, tmp_path):
    path = tmp_path / "other.npz"
    save_params({"llm": {"final_norm": {"scale": np.zeros(7, np.float32)}}}, path)
    with pytest.raises(app.ModelSourceError) as caught:
        app.load_captioner(app.ModelSource("other", "tiny", path), assets)
    assert str(path) in str(caught.value) and "pick that architecture" in str(caught.value)


def test_checkpoint_of_a_diverged_run_is_refused(assets, tmp_path):
    path = tmp_path / "runs" / "diverged" / "checkpoint.npz"
    params = load_params(assets / "params.npz")
    params["llm"]["final_norm"]["scale"] = np.full_like(
        params["llm"]["final_norm"]["scale"], np.nan
    )
    save_params(params, path)
    with pytest.raises(app.ModelSourceError) as caught:
        app.load_captioner(app.ModelSource("diverged", "tiny", path), assets)
    message = str(caught.value)
    assert message.startswith(f"{path} holds NaN or inf weights (the first in 'llm/final_norm/")
    assert "Pick an earlier run" in message


def test_missing_tiny_model_says_how_to_build_it(tmp_path):
    with pytest.raises(app.ModelSourceError) as caught:
        app.load_captioner(app.ModelSource("tiny"), tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "python -m capstone.factory.pretrain" in message
    assert app.TINY_ASSETS_ENV in message


def test_absent_real_model_gives_advice_and_downloads_nothing(app_env, monkeypatch):
    from solutions import downloads

    def no_network(*args, **kwargs):
        raise AssertionError("the app must not download")

    monkeypatch.setattr(downloads.kagglehub, "model_download", no_network)
    monkeypatch.setattr(downloads, "download_tokenizer", no_network)
    name = "paligemma-3b-pt-224"
    assert app.real_checkpoint_files(name) is None
    assert [source.label for source in app.model_sources()] == ["tiny (shipped)"]
    with pytest.raises(app.ModelSourceError) as caught:
        app.load_captioner(app.ModelSource(name, name))
    assert "PALIGEMMA_CHECKPOINT_DIR" in str(caught.value) and "--checkpoint kaggle" in str(
        caught.value
    )


def test_real_model_on_disk_is_listed(app_env):
    info = CHECKPOINTS["paligemma2-3b-pt-448"]
    folder = app_env / "real"
    folder.mkdir()
    (folder / info.filename).write_bytes(b"")
    assert "paligemma2-3b-pt-448" not in [s.label for s in app.model_sources()]  # no tokenizer
    (folder / "paligemma_tokenizer.model").write_bytes(b"")
    assert app.real_checkpoint_files(info.name) == (
        folder / info.filename,
        folder / "paligemma_tokenizer.model",
    )
    assert "paligemma2-3b-pt-448" in [s.label for s in app.model_sources()]


def test_latest_run_is_the_newest_checkpoint_and_loads_into_the_tiny_model(
    assets, captioner, app_env
):
    runs = app_env / "runs"
    for name, mtime in (("old", 1_000_000), ("new", 2_000_000)):
        (runs / name).mkdir(parents=True)
        save_params(captioner.params, runs / name / "checkpoint.npz")
        os.utime(runs / name / "checkpoint.npz", (mtime, mtime))
    assert app.latest_run_checkpoint(runs) == runs / "new" / "checkpoint.npz"
    latest = app.model_sources()[1]
    assert latest.label == "latest run (new)" and latest.architecture == "tiny"
    loaded = app.load_captioner(latest, assets)
    assert loaded.num_params == captioner.num_params


# --------------------------------------------------------------------------- the captioner


def test_captioner_reports_name_size_and_resolution(assets, captioner):
    card = json.loads((assets / "config.json").read_text())
    expected = count_params(param_shapes(captioner.model, card["resolution"]))
    side = card["resolution"]
    assert captioner.resolution == side == 96
    assert captioner.num_params == expected
    assert captioner.summary == (
        f"tiny (shipped): {expected / 1e6:.1f}M parameters, {side}x{side} images"
    )


def test_greedy_caption_is_the_unpadded_prompts_decode(captioner):
    """Padding the prompt to a block of 16 must not change what greedy decoding writes."""
    image = scenes.render_scene(scenes.sample_scene(5))
    text, mask_ar, _, mask_input = preprocess_tokens("caption en", tokenizer=captioner.tokenizer)
    batch = {
        "image": preprocess_image(image, captioner.resolution)[None],
        "text": text[None],
        "mask_ar": mask_ar[None],
        "mask_input": mask_input[None],
    }
    max_len = app.DEFAULT_MAX_LEN  # the warm-up's length: only the unpadded decode compiles
    tokens = decode(captioner.params, batch, model=captioner.model, max_decode_len=max_len)
    expected = postprocess_tokens(tokens[0], tokenizer=captioner.tokenizer)
    [caption] = captioner.caption([image], "caption en", max_len=max_len)
    assert caption.text == expected
    assert caption.seconds > 0


def test_prompts_are_padded_to_a_block(captioner):
    short, longer = captioner.prompt("caption en"), captioner.prompt("describe en")
    assert short["text"].shape == longer["text"].shape == (1, app.PROMPT_BLOCK)
    real = preprocess_tokens("caption en", tokenizer=captioner.tokenizer)[0]
    assert short["mask_input"][0].sum() == len(real)


def test_after_warm_up_captions_and_new_sampler_settings_compile_nothing(captioner):
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    images = [scene.image for scene in app.gallery(2)]
    # The app's sliders: sampling settings are traced values of the one compiled decoder.
    moves = [(0.7, 0, 1.0), (1.5, 40, 1.0), (1.0, 0, 0.9), (0.3, 5, 0.5)]
    samplers = [app.sampler_from_controls("sampling", *move) for move in moves]
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        captions = captioner.caption(images)
        for sampler in samplers:
            captions += captioner.caption(images[:1], sampler=sampler)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []
    assert len(captions) == 2 + len(moves)


def test_sampling_is_seeded(captioner):
    image = app.gallery(1)[0].image
    sampler = app.sampler_from_controls("sampling", temperature=1.5, top_k=50, top_p=0.9)
    assert sampler == app.Sampler(temperature=1.5, top_k=50, top_p=0.9)
    first = captioner.caption([image], sampler=sampler, max_len=8, seed=3)[0].text
    again = captioner.caption([image], sampler=sampler, max_len=8, seed=3)[0].text
    assert first == again


def test_sampler_controls():
    assert app.sampler_from_controls("greedy", temperature=1.5, top_k=5).greedy
    with pytest.raises(ValueError, match="top_p"):
        app.sampler_from_controls("sampling", top_p=0.0)
    with pytest.raises(ValueError, match="'greedy' or 'sampling'"):
        app.sampler_from_controls("beam")


def test_gallery_draws_distinct_validation_scenes():
    samples = app.gallery(4)
    assert len({s.name for s in samples}) == 4
    assert all(s.image.mode == "RGB" and s.image.size == (224, 224) for s in samples)
    assert len({s.image.tobytes() for s in samples}) == 4
    truth = scenes.sample_scene(scenes.example_seed(0, "val", 2), split="val")
    assert samples[2].reference == scenes.short_caption(truth)


# --------------------------------------------------------------------------- the table


ROWS = [
    app.CaptionRow("a,b.png", 'a "quoted", comma caption', 0.12345),
    app.CaptionRow("été.jpg", "line one\nline two ✓", 1.0),
]


def test_csv_round_trips():
    table = list(csv.reader(io.StringIO(app.captions_csv(ROWS).decode())))
    assert table[0] == ["file_name", "caption", "seconds"]
    assert table[1:] == [[r.file_name, r.caption, str(round(r.seconds, 3))] for r in ROWS]


def test_jsonl_round_trips():
    lines = app.captions_jsonl(ROWS).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"file_name": r.file_name, "caption": r.caption, "seconds": round(r.seconds, 3)}
        for r in ROWS
    ]


# --------------------------------------------------------------------------- the page


def start_app() -> AppTest:
    page = AppTest.from_file(APP_SCRIPT, default_timeout=APP_TIMEOUT_S)
    page.run()
    assert not page.exception, page.exception
    return page


def shown_captions(page: AppTest) -> list[str]:
    return [element.value for element in page.main.text]


def errors(page: AppTest) -> list[str]:
    return [element.value for element in page.error]


def test_page_captions_a_sample_scene(app_env, captioner):
    page = start_app()
    assert page.sidebar.text[0].value == captioner.summary
    assert page.text_input(key="prefix").value == "caption en"
    page.checkbox(key="sample_0").check().run()
    expected = captioner.caption([app.gallery(1)[0].image], max_len=app.DEFAULT_MAX_LEN)[0]
    assert shown_captions(page) == [expected.text or "(the model wrote nothing)"]
    assert page.main.caption[-1].value.endswith(" s")
    assert [button.label for button in page.download_button] == ["Download CSV", "Download JSONL"]
    assert not errors(page)


def test_page_shows_each_bad_upload_in_place_and_keeps_working(app_env):
    page = start_app()
    uploads = [
        ("notes.png", b"plain text, not pixels", "image/png"),
        ("red.png", red_png(), "image/png"),
        ("broken.jpg", truncated_jpeg(), "image/jpeg"),
        ("huge.png", png_claiming(8000, 8000), "image/png"),
        ("cmyk.jpg", cmyk_jpeg(), "image/jpeg"),
        ("grey16.png", grey16_png(), "image/png"),
        ("anim.gif", animated_gif(), "image/gif"),
    ]
    page.file_uploader(key="uploads").set_value(uploads).run()
    assert not page.exception, page.exception
    messages = errors(page)
    assert [message.split()[0].rstrip(":") for message in messages] == [
        "notes.png",
        "broken.jpg",
        "huge.png",
    ]
    assert len(shown_captions(page)) == 4  # red, cmyk, grey16, anim
    assert [name for image in page.main.image for name in image.captions][-4:] == [
        "red.png",
        "cmyk.jpg",
        "grey16.png",
        "anim.gif",
    ]

    page.file_uploader(key="uploads").set_value([("next.png", red_png(), "image/png")]).run()
    assert not page.exception and not errors(page)
    assert len(shown_captions(page)) == 1


def test_page_explains_a_missing_checkpoint_then_recovers(app_env):
    page = start_app()
    missing = app_env / "runs" / "mine" / "checkpoint.npz"
    page.selectbox(key="model").select("a checkpoint file...").run()
    page.text_input(key="checkpoint").input(str(missing)).run()
    assert not page.exception
    assert len(errors(page)) == 1 and str(missing) in errors(page)[0]
    page.selectbox(key="model").select("tiny (shipped)").run()
    page.checkbox(key="sample_1").check().run()
    assert not errors(page) and len(shown_captions(page)) == 1


def test_page_sampling_controls_caption_too(app_env):
    page = start_app()
    page.radio(key="mode").set_value("sampling").run()
    page.slider(key="temperature").set_value(0.7)
    page.number_input(key="top_k").set_value(20)
    page.slider(key="max_len").set_value(6)
    page.checkbox(key="sample_2").check().run()
    assert not page.exception and not errors(page)
    assert len(shown_captions(page)) == 1
