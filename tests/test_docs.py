"""The course website: lessons rendered as pages, and the whole site built with `--strict`.

The fast tests call the lessons hook directly on a small lesson written here;
the slow ones build the site once (`mkdocs build --strict`) and look at it.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import importlib.util
import io
import os
import pathlib
import subprocess
import sys

import jupytext
import nbformat
import pytest
from PIL import Image

from tests import grading

ROOT = pathlib.Path(__file__).resolve().parents[1]
LESSONS = sorted(p for p in (ROOT / "lessons").glob("*.py") if p.name[:2].isdigit())
# The modules of solutions/, and those of its packages (each package has one page for all).
MODULES = sorted(
    p
    for p in (*(ROOT / "solutions").glob("*.py"), *(ROOT / "solutions").glob("*/*.py"))
    if not p.name.startswith("_")
)


def _load_hook(name: str):
    """A hook module of docs/hooks/ (they are files mkdocs loads, not a package)."""
    spec = importlib.util.spec_from_file_location(f"hook_{name}", ROOT / "docs" / "hooks" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lessons_hook = _load_hook("lessons.py")

SAMPLE_LESSON = '''# %% [markdown]
# # Lesson 7: A sample
#
# **Time:** five minutes.

# %% tags=["setup"]
import numpy as np

# %%
print("the plain cell ran")

# %%
print("this cell changes after the run")

# %% tags=["exercise"]
def double(x):
    """Returns float32[N]: twice x."""
    raise NotImplementedError("Exercise 7.1")


# %% tags=["check"]
check("ex7_1")
'''


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _stream(text: str, name: str = "stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def _image(png: bytes):
    data = {"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"}
    return nbformat.v4.new_output("display_data", data=data)


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


@pytest.fixture
def sample(tmp_path):
    """(lesson .py, its executed notebook) as `make test-lessons` would leave them, except
    that one cell changed after the run."""
    py = tmp_path / "07_sample.py"
    py.write_text(SAMPLE_LESSON)
    executed = jupytext.read(py)
    setup, plain, changed, exercise, check = _code_cells(executed)
    setup.outputs = [
        _stream(
            "WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\nI0000 00:00:1795741705.790512   29518 port.cc:153] oneDNN custom operations "
            "are on.\nUserWarning: a warning the lesson means to show\n",
            "stderr",
        )
    ]
    plain.outputs = [_stream("the plain cell ran\n"), _image(_png((255, 0, 0)))]
    changed.source = 'print("the old version of the cell")'
    changed.outputs = [_stream("the old version of the cell\n")]
    exercise.source = "# the reference solution, swapped in\nfrom somewhere import double"
    check.outputs = [_stream("✅ Exercise 7.1: all 2 checks pass\n")]
    path = tmp_path / "executed.ipynb"
    nbformat.write(executed, path)
    return py, path


def test_exercise_renders_as_a_question_box_around_the_stub(sample):
    page, _ = lessons_hook.lesson_page(sample[0], None)
    assert '!!! question "Exercise 7.1: `double`"' in page
    box = page.split('!!! question "Exercise 7.1: `double`"', 1)[1].split("???", 1)[0]
    assert '    raise NotImplementedError("Exercise 7.1")' in box
    assert "pytest -m lesson7 -k ex7_1" in box


def test_check_cell_is_folded(sample):
    page, _ = lessons_hook.lesson_page(sample[0], None)
    assert '??? success "Check of exercise 7.1"' in page
    assert '    check("ex7_1")' in page


def test_without_an_executed_notebook_the_page_has_no_outputs(sample):
    page, images = lessons_hook.lesson_page(sample[0], None)
    assert images == {}
    assert "cell-output" not in page
    assert "without its outputs" in page


def test_outputs_and_images_come_from_the_executed_notebook(sample):
    py, executed = sample
    page, images = lessons_hook.lesson_page(py, executed)
    [(name, data)] = images.items()
    assert data == _png((255, 0, 0))
    assert f"![output](07_sample/{name}){{ .cell-output }}" in page
    assert "the plain cell ran\n```" in page
    assert "✅ Exercise 7.1: all 2 checks pass" in page


def test_the_page_never_shows_the_swapped_in_solution(sample):
    page, _ = lessons_hook.lesson_page(*sample)
    assert "the reference solution, swapped in" not in page
    assert 'raise NotImplementedError("Exercise 7.1")' in page


def test_a_cell_changed_since_the_run_gets_no_stale_output(sample):
    page, _ = lessons_hook.lesson_page(*sample)
    assert 'print("this cell changes after the run")' in page
    assert "the old version of the cell" not in page


def test_runtime_log_lines_are_dropped_but_warnings_kept(sample):
    page, _ = lessons_hook.lesson_page(*sample)
    assert "absl::InitializeLog" not in page
    assert "oneDNN" not in page
    assert "UserWarning: a warning the lesson means to show" in page


def test_overview_lists_every_lesson_with_its_exercises():
    page = lessons_hook.overview_page(LESSONS)
    for path in LESSONS:
        exercises = sum("exercise" in tags for tags, _ in grading.read_cells(path))
        row = next(line for line in page.splitlines() if f"]({path.stem}.md)" in line)
        assert f"| {exercises} |" in row


def _help_flags(module_name: str) -> list[str]:
    """The long flags a capstone command's --help lists."""
    module = importlib.import_module(module_name)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        module.main(["--help"])
    return sorted({word.strip("[],") for word in out.getvalue().split() if word.startswith("--")})


@pytest.mark.parametrize("module_name", ["capstone.finetune", "capstone.factory.pretrain"])
def test_capstone_page_documents_every_flag(module_name):
    page = (ROOT / "docs" / "capstone.md").read_text()
    flags = [flag for flag in _help_flags(module_name) if flag != "--help"]
    assert flags, f"no flags read from {module_name} --help"
    missing = [flag for flag in flags if f"`{flag}`" not in page]
    assert not missing, f"docs/capstone.md does not document {missing} of {module_name}"


# ----------------------------------------------------------------------------- the built site


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with --strict; the first lesson's outputs come from a notebook made
    here (a PNG among them), the others' from none."""
    outputs = tmp_path_factory.mktemp("executed")
    executed = jupytext.read(LESSONS[0])
    plain = next(c for c in _code_cells(executed) if not c.metadata.get("tags"))
    plain.outputs = [_image(_png((0, 0, 255)))]
    nbformat.write(executed, outputs / f"{LESSONS[0].stem}.ipynb")
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, lessons_hook.OUTPUTS_ENV: str(outputs), "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_lesson_has_a_page_with_its_exercises(site, lesson):
    page = site / "lessons" / lesson.stem / "index.html"
    assert page.is_file(), f"no page for {lesson.name}"
    html = page.read_text()
    title = jupytext.read(lesson).cells[0].source.splitlines()[0].lstrip("# ").strip()
    assert title in html
    exercises = sum("exercise" in tags for tags, _ in grading.read_cells(lesson))
    assert html.count('<div class="admonition question">') == exercises


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", MODULES, ids=lambda p: ".".join(p.relative_to(ROOT).with_suffix("").parts[1:])
)
def test_every_solutions_module_has_a_page_with_its_functions(site, module):
    parts = module.relative_to(ROOT).with_suffix("").parts  # ("solutions", ["scenes",] name)
    page = site / "reference" / parts[1] / "index.html"
    assert page.is_file(), f"no API page for {module.relative_to(ROOT)}"
    dotted = ".".join(parts)
    html = page.read_text()
    public = [
        node.name
        for node in ast.parse(module.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    ]
    missing = [name for name in public if f'id="{dotted}.{name}"' not in html]
    assert not missing, f"{dotted}: {missing} are not documented"


@pytest.mark.slow
def test_an_image_output_is_a_png_next_to_its_page(site):
    folder = site / "lessons" / LESSONS[0].stem
    [png] = folder.glob("cell-*.png")
    assert png.read_bytes() == _png((0, 0, 255))
    assert f'src="{png.name}"' in (folder / "index.html").read_text()
