"""Graded checks for lesson 9 (the captioning app): one test per behaviour, named
test_ex9_K_<what>."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from solutions.app import CaptionRow, ImageInputError
from solutions.evaluate import Sampler
from tests.grading import expect_close, expect_equal, expect_raises, expect_true

LESSON = 9
SOLUTIONS = ("solutions.app",)
pytestmark = pytest.mark.lesson9


# --------------------------------------------------------------------------- uploads to read


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


# --------------------------------------------------------------------------- 9.1 read_upload


def test_ex9_1_reads_each_accepted_format_as_rgb(impl):
    colour = (200, 40, 90)  # one colour: GIF's palette holds it exactly
    source = Image.new("RGB", (40, 24), colour)
    cases = [("PNG", {}, 0), ("JPEG", {"quality": 95}, 3), ("WEBP", {"lossless": True}, 0)]
    cases.append(("GIF", {}, 0))
    for image_format, options, tolerance in cases:
        name = f"upload.{image_format.lower()}"
        image = impl.read_upload(_encoded(source, image_format, **options), name)
        expect_equal(
            (image.mode, image.size),
            ("RGB", (40, 24)),
            what=f"(mode, size) read from {name}",
            hint="return image.convert('RGB'): the file's own size, three 8-bit channels",
        )
        expect_close(
            _pixels(image),
            np.broadcast_to(colour, (24, 40, 3)),
            atol=tolerance,
            rtol=0,
            what=f"pixels of {name}",
            hint="open with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)",
        )


def test_ex9_1_greyscale_and_transparent_pngs_become_rgb(impl):
    grey = Image.fromarray(_noise(6, 9, seed=1)[..., 0])  # mode "L"
    image = impl.read_upload(_encoded(grey, "PNG"), "grey.png")
    expect_close(
        _pixels(image),
        np.repeat(_pixels(grey)[..., None], 3, axis=-1),
        atol=0,
        rtol=0,
        what="a greyscale PNG",
        hint="grey becomes R = G = B: Pillow's convert('RGB') does it",
    )
    rgba = np.concatenate([_noise(6, 9, seed=2), np.full((6, 9, 1), 60, np.uint8)], axis=-1)
    image = impl.read_upload(_encoded(Image.fromarray(rgba), "PNG"), "sticker.png")
    expect_close(
        _pixels(image),
        rgba[..., :3],
        atol=0,
        rtol=0,
        what="an RGBA PNG (alpha 60 everywhere)",
        hint="drop alpha, as preprocess_image does: keep the stored R, G, B unchanged",
    )


def test_ex9_1_animated_gif_gives_its_first_frame(impl):
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    data = _encoded(red, "GIF", save_all=True, append_images=[blue])
    image = impl.read_upload(data, "anim.gif")
    expect_equal(
        image.getpixel((8, 8)),
        (255, 0, 0),
        what="the centre pixel of a red-then-blue animation",
        hint="Image.open starts at frame 0; do not seek to another frame",
    )


def test_ex9_1_cmyk_jpeg_becomes_rgb(impl):
    ink = (0, 255, 255, 0)  # magenta and yellow ink: red on paper
    data = _encoded(Image.new("CMYK", (32, 32), ink), "JPEG", quality=95)
    image = impl.read_upload(data, "print.jpg")
    want = Image.new("CMYK", (1, 1), ink).convert("RGB").getpixel((0, 0))
    expect_equal(image.mode, "RGB", what="mode of a CMYK JPEG", hint="convert('RGB')")
    expect_close(
        _pixels(image)[16, 16],
        np.asarray(want),
        atol=3,
        rtol=0,
        what="the colour of a CMYK JPEG",
        hint="four ink channels are not R, G, B, alpha: let Pillow convert CMYK to RGB",
    )


def test_ex9_1_sixteen_bit_png_is_scaled_not_clipped(impl):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    data = _encoded(Image.fromarray(np.tile(ramp, (8, 1))), "PNG")  # 16-bit greyscale
    image = impl.read_upload(data, "scan.png")
    row = _pixels(image)[0]
    expect_close(
        row,
        np.repeat((ramp / 257).round()[:, None], 3, axis=-1).astype(np.int64),
        atol=1,
        rtol=0,
        what="a 16-bit grey ramp 0..65535, read as 8 bits",
        hint="Pillow's convert clips 16-bit values at 255 (mostly white); for modes starting "
        "with 'I' divide the values by 257 yourself (65535 -> 255)",
    )


def test_ex9_1_exif_orientation_is_applied(impl):
    stored = Image.fromarray(_noise(20, 40, seed=3))  # the sensor's 40 x 20 pixels
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation 6: turn 90 degrees clockwise to show it
    image = impl.read_upload(_encoded(stored, "JPEG", exif=exif), "phone.jpg")
    expect_equal(
        image.size,
        (20, 40),
        what="(width, height) of a phone photo stored sideways",
        hint="ImageOps.exif_transpose(image) turns it the way the camera was held",
    )


def test_ex9_1_refuses_what_is_not_an_accepted_image(impl):
    noise = Image.fromarray(_noise(128, 128, seed=4))
    jpeg = _encoded(noise, "JPEG")
    cases = [
        ("empty.png", b"", "an empty file"),
        ("notes.png", b"plain text, not pixels", "text named .png"),
        ("old.bmp", _encoded(noise, "BMP"), "a BMP (not one of the four formats)"),
        ("scan.tiff", _encoded(noise, "TIFF"), "a TIFF (not one of the four formats)"),
        ("cut.jpg", jpeg[: len(jpeg) // 2], "a JPEG cut in half (damaged pixel data)"),
    ]
    for name, data, what in cases:
        error = expect_raises(
            ImageInputError,
            impl.read_upload,
            data,
            name,
            what=what,
            hint="catch Pillow's errors (UnidentifiedImageError, OSError, ...) where they "
            "happen, opening and decoding, and raise ImageInputError instead",
        )
        expect_true(
            name in str(error),
            what=f"the message for {what} names {name!r} (it said {str(error)!r})",
            hint="start the message with the file name: the page shows several uploads",
        )


def test_ex9_1_pixel_limit_counts_width_times_height(impl):
    data = _encoded(Image.new("RGB", (48, 32), (0, 128, 0)), "PNG")  # 1,536 pixels
    image = impl.read_upload(data, "small.png", max_pixels=48 * 32)
    expect_equal(
        image.size,
        (48, 32),
        what="an image of exactly max_pixels pixels",
        hint="refuse only width * height > max_pixels",
    )
    expect_raises(
        ImageInputError,
        impl.read_upload,
        data,
        "small.png",
        max_pixels=48 * 32 - 1,
        what="an image one pixel over max_pixels",
        hint="compare width * height (image.size) with max_pixels",
    )


def test_ex9_1_oversized_header_is_refused_before_decoding(impl):
    # 64 million pixels claimed in 80 bytes: the pixel data cannot even be decoded, so only a
    # check made from the header can say how big the image claims to be.
    error = expect_raises(
        ImageInputError,
        impl.read_upload,
        _png_claiming(8000, 8000),
        "huge.png",
        what="a PNG claiming 8000 x 8000 pixels (over the default limit of 50 million)",
        hint="check image.size right after Image.open, which reads only the header",
    )
    expect_true(
        "huge.png" in str(error) and "8000" in str(error),
        what=f"the message names the file and its size, 8000x8000 (it said {str(error)!r})",
        hint="the size is known from the header: say it, and say to downscale",
    )
    expect_raises(
        ImageInputError,
        impl.read_upload,
        _png_claiming(30000, 30000),
        "bomb.png",
        what="a PNG claiming 900 million pixels",
        hint="Pillow's Image.open itself raises Image.DecompressionBombError over ~179 "
        "million pixels: catch it too",
    )


# --------------------------------------------------------------------------- 9.2 latest run


def _write_checkpoint(path: pathlib.Path, mtime: int) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    os.utime(path, (mtime, mtime))
    return path


def test_ex9_2_picks_the_most_recently_written_checkpoint(impl, tmp_path):
    # Names sort the other way round: only the modification times say which is newest.
    newest = _write_checkpoint(tmp_path / "aaa" / "checkpoint.npz", 3_000_000)
    _write_checkpoint(tmp_path / "mmm" / "checkpoint.npz", 2_000_000)
    _write_checkpoint(tmp_path / "zzz" / "checkpoint.npz", 1_000_000)
    got = impl.latest_run_checkpoint(tmp_path)
    expect_equal(
        None if got is None else pathlib.Path(got),
        newest,
        what="the newest of three runs",
        hint="max(..., key=lambda path: path.stat().st_mtime): the newest file, not the last name",
    )


def test_ex9_2_looks_only_at_run_checkpoints(impl, tmp_path):
    wanted = _write_checkpoint(tmp_path / "mine" / "checkpoint.npz", 1_000_000)
    _write_checkpoint(tmp_path / "mine" / "params.npz", 2_000_000)  # newer, not a checkpoint
    (tmp_path / "mine" / "log.txt").write_text("step 1")
    got = impl.latest_run_checkpoint(tmp_path)
    expect_equal(
        None if got is None else pathlib.Path(got),
        wanted,
        what="the checkpoint among other newer files",
        hint="a fine-tune writes runs/<name>/checkpoint.npz: runs.glob('*/checkpoint.npz')",
    )


def test_ex9_2_none_without_a_checkpoint(impl, tmp_path):
    (tmp_path / "started").mkdir()  # a run that has not saved yet
    expect_equal(
        impl.latest_run_checkpoint(tmp_path),
        None,
        what="runs folder with no checkpoint",
        hint="max(..., default=None) returns None for no files",
    )
    expect_equal(
        impl.latest_run_checkpoint(tmp_path / "missing"),
        None,
        what="a runs folder that does not exist (a fresh clone)",
        hint="glob of a missing folder finds nothing: return None, raise nothing",
    )


# --------------------------------------------------------------------------- 9.3 sampler


def test_ex9_3_greedy_ignores_the_knobs(impl):
    got = impl.sampler_from_controls("greedy", 1.5, 40, 0.0)  # top_p 0 would be invalid
    expect_equal(
        got,
        Sampler(temperature=0.0),
        what="sampler_from_controls('greedy', 1.5, 40, 0.0)",
        hint="greedy is temperature 0 with no filters, whatever the hidden sliders hold",
    )


def test_ex9_3_sampling_passes_the_knobs(impl):
    cases = [
        (("sampling", 0.7, 20, 0.9), Sampler(temperature=0.7, top_k=20, top_p=0.9)),
        (("sampling",), Sampler(temperature=1.0, top_k=0, top_p=1.0)),
    ]
    for arguments, want in cases:
        expect_equal(
            impl.sampler_from_controls(*arguments),
            want,
            what=f"sampler_from_controls{arguments}",
            hint="Sampler(temperature=temperature, top_k=top_k, top_p=top_p)",
        )


def test_ex9_3_unknown_mode_is_an_error_naming_the_modes(impl):
    error = expect_raises(
        ValueError,
        impl.sampler_from_controls,
        "beam",
        what="mode 'beam'",
        hint="raise ValueError for any mode but 'greedy' and 'sampling'",
    )
    expect_true(
        "greedy" in str(error) and "sampling" in str(error),
        what=f"the message names both modes (it said {str(error)!r})",
        hint="say what would have worked: 'greedy' or 'sampling'",
    )


def test_ex9_3_invalid_sampling_knobs_are_refused(impl):
    expect_raises(
        ValueError,
        impl.sampler_from_controls,
        "sampling",
        1.0,
        0,
        0.0,
        what="sampling with top_p = 0 (no token could be drawn)",
        hint="build a Sampler: it checks its own fields and raises ValueError",
    )


# --------------------------------------------------------------------------- 9.4 the downloads

TRICKY_ROWS = [
    CaptionRow("a,b.png", 'a "quoted", comma caption', 0.12345),
    CaptionRow("été.jpg", "line one\nline two ✓", 1.0),
    CaptionRow("blank.gif", "", 0.0004),
]


def test_ex9_4_csv_round_trips_commas_quotes_and_newlines(impl):
    got = impl.captions_csv(TRICKY_ROWS)
    expect_true(
        isinstance(got, bytes),
        what=f"captions_csv returns bytes (got {type(got).__name__})",
        hint="a download button wants bytes: .encode() the text (UTF-8)",
    )
    table = list(csv.reader(io.StringIO(got.decode("utf-8"), newline="")))
    expect_equal(
        table[0],
        ["file_name", "caption", "seconds"],
        what="the header row",
        hint="write CaptionRow._fields first",
    )
    expect_equal(
        [row[:2] for row in table[1:]],
        [[row.file_name, row.caption] for row in TRICKY_ROWS],
        what="file names and captions read back with csv.reader",
        hint="use csv.writer: it quotes fields holding commas, quotes or newlines",
    )
    expect_equal(
        [float(row[2]) for row in table[1:]],
        [round(row.seconds, 3) for row in TRICKY_ROWS],
        what="seconds read back",
        hint="round(seconds, 3): milliseconds are plenty",
    )


def test_ex9_4_csv_defuses_spreadsheet_formulas(impl):
    rows = [
        CaptionRow('=HYPERLINK("http://example.com")', "+1 shape", 0.1),
        CaptionRow("@sum.png", "-2", 0.1),
        CaptionRow("\tcmd.png", "\rline", 0.1),
        CaptionRow("plain.png", "a caption with = and + inside", 0.1),
    ]
    table = list(csv.reader(io.StringIO(impl.captions_csv(rows).decode("utf-8"), newline="")))
    expect_equal(
        [row[:2] for row in table[1:]],
        [
            ['\'=HYPERLINK("http://example.com")', "'+1 shape"],
            ["'@sum.png", "'-2"],
            ["'\tcmd.png", "'\rline"],
            ["plain.png", "a caption with = and + inside"],
        ],
        what="cells a spreadsheet would run as formulas, read back",
        hint="put an apostrophe in front of a file name or caption that starts with "
        "=, +, -, @, a tab or a carriage return; leave the others as they are",
    )


def test_ex9_4_csv_of_no_rows_is_the_header(impl):
    got = impl.captions_csv([])
    expect_equal(
        list(csv.reader(io.StringIO(got.decode("utf-8")))),
        [["file_name", "caption", "seconds"]],
        what="captions_csv([]) read back",
        hint="the header is written even when there are no rows",
    )


def test_ex9_4_jsonl_holds_one_object_per_row(impl):
    got = impl.captions_jsonl(TRICKY_ROWS)
    expect_true(
        isinstance(got, bytes),
        what=f"captions_jsonl returns bytes (got {type(got).__name__})",
        hint="join the lines, each ending in '\\n', and .encode() them",
    )
    lines = got.decode("utf-8").splitlines()
    expect_equal(
        len(lines),
        len(TRICKY_ROWS),
        what="number of lines for 3 rows (one caption holds a newline)",
        hint="one json.dumps per row; it writes a newline inside a string as \\n",
    )
    expect_equal(
        [json.loads(line) for line in lines],
        [
            {"file_name": row.file_name, "caption": row.caption, "seconds": round(row.seconds, 3)}
            for row in TRICKY_ROWS
        ],
        what="the objects read back with json.loads",
        hint="json.dumps({'file_name': ..., 'caption': ..., 'seconds': round(seconds, 3)})",
    )


def test_ex9_4_jsonl_keeps_text_readable(impl):
    got = impl.captions_jsonl(TRICKY_ROWS[1:2])
    expect_true(
        "été.jpg".encode() in got and "✓".encode() in got,
        what=f"accents and symbols stored as themselves in UTF-8 (got {got!r})",
        hint="json.dumps(..., ensure_ascii=False) keeps 'é' instead of writing '\\u00e9'",
    )
    expect_equal(
        impl.captions_jsonl([]),
        b"",
        what="captions_jsonl([])",
        hint="no rows, no lines: empty bytes",
    )
