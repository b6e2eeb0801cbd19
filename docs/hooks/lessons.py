"""MkDocs hook: the lessons (`lessons/NN_topic.py`) as pages of the course website.

At build time every lesson becomes `lessons/NN_topic.md` in the site, a page
that exists only in memory (nothing is written into docs/):

    markdown cells   ->  the page's prose, as written
    setup cells      ->  code titled "setup"
    exercise cells   ->  an `!!! question "Exercise N.K: ..."` box around the stub
    check cells      ->  a folded `??? success` box with the check and its verdict
    other code cells ->  code, then its outputs: text, tables, and images as PNG
                         files next to the page (`lessons/NN_topic/cell-07-1.png`)

The code always comes from the `.py`, the learner's starting point. Outputs
come from the executed notebook `build/lessons/NN_topic.ipynb` when it exists
(`make test-lessons` writes it, exercises solved by the reference solutions;
set COURSE_LESSON_OUTPUTS to read another folder). A cell whose code changed
since that run gets no output rather than a stale one.

The hook also lists the lessons, in order, under the "Lessons" section of the
nav and writes its overview page, `lessons/index.md`.
"""

from __future__ import annotations

import ast
import base64
import logging
import os
import pathlib
import re
from collections import defaultdict, deque

import jupytext
import nbformat
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.lessons")

OUTPUTS_ENV = "COURSE_LESSON_OUTPUTS"
DEFAULT_OUTPUTS = pathlib.Path("build") / "lessons"
PAGES = "lessons"  # the lesson pages' folder inside the site
NAV_SECTION = "Lessons"
LESSON_FILE = re.compile(r"^(\d\d)_\w+\.py$")
EXERCISE_LABEL = re.compile(r"Exercise (\d+\.\d+)")
CHECK_CALL = re.compile(r"check\(\s*[\"']ex(\d+)_(\d+)[\"']")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Log lines the C++ side of TensorFlow and XLA writes to stderr at import: they
# describe the machine that ran the lesson, not the lesson, so pages leave them out.
RUNTIME_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\])"
)
# Richest first: the first of these an output holds is the one shown.
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg"}
TEXT_TYPES = ("text/html", "text/markdown", "text/plain")


# ----------------------------------------------------------------------------- where things are


def _root(config) -> pathlib.Path:
    return pathlib.Path(config.config_file_path).resolve().parent


def lesson_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The lessons `lessons/NN_topic.py`, in lesson order."""
    return sorted(p for p in (root / "lessons").glob("*.py") if LESSON_FILE.match(p.name))


def outputs_dir(root: pathlib.Path) -> pathlib.Path:
    """The folder of executed notebooks: $COURSE_LESSON_OUTPUTS, else build/lessons."""
    return root / os.environ.get(OUTPUTS_ENV, DEFAULT_OUTPUTS)


# ----------------------------------------------------------------------------- mkdocs events


def on_config(config):
    """Puts one nav entry per lesson at the end of the "Lessons" section."""
    section = _nav_section(config.nav or [], NAV_SECTION)
    if section is None:
        raise ValueError(f"mkdocs.yml: the nav needs a section named {NAV_SECTION!r}")
    section.extend(f"{PAGES}/{path.stem}.md" for path in lesson_files(_root(config)))
    return config


def _nav_section(nav: list, title: str) -> list | None:
    for item in nav:
        if isinstance(item, dict) and isinstance(item.get(title), list):
            return item[title]
    return None


def on_files(files: Files, config) -> Files:
    """Adds every lesson page, its images, and the lessons overview page."""
    root = _root(config)
    lessons = lesson_files(root)
    for path in lessons:
        executed = outputs_dir(root) / f"{path.stem}.ipynb"
        page, images = lesson_page(path, executed if executed.is_file() else None)
        files.append(File.generated(config, f"{PAGES}/{path.stem}.md", content=page))
        for name, data in images.items():
            files.append(File.generated(config, f"{PAGES}/{path.stem}/{name}", content=data))
    files.append(File.generated(config, f"{PAGES}/index.md", content=overview_page(lessons)))
    return files


def on_serve(server, config, builder):
    """`mkdocs serve` rebuilds when a lesson or an executed notebook changes."""
    root = _root(config)
    for folder in (root / "lessons", outputs_dir(root)):
        if folder.is_dir():
            server.watch(str(folder))
    return server


# ----------------------------------------------------------------------------- one lesson


def lesson_page(py: pathlib.Path, executed: pathlib.Path | None) -> tuple[str, dict[str, bytes]]:
    """(markdown of the page, {image file name: bytes}) for the lesson `py`.

    `executed` is the notebook whose outputs are shown, or None for none.
    """
    notebook = jupytext.read(py)
    outputs = CellOutputs(nbformat.read(executed, as_version=4)) if executed else None
    number = int(py.name[:2])
    blocks, images = [], {}
    exercises = 0
    for index, cell in enumerate(notebook.cells):
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type == "markdown":
            blocks.append(cell.source)
            if index == 0:
                blocks.append(_about_box(py, number, executed))
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        cell_outputs = outputs.take(cell, tags) if outputs else []
        boxed = bool(tags & {"exercise", "check"})
        rendered = render_outputs(
            cell_outputs, f"cell-{index:02d}", images, f"{py.stem}/", boxed=boxed
        )
        if "exercise" in tags:
            exercises += 1
            blocks.append(_exercise_box(cell.source, number, exercises, rendered))
        elif "check" in tags:
            blocks.append(_check_box(cell.source, rendered))
        else:
            title = "setup" if "setup" in tags else None
            blocks.append("\n\n".join([_fence(cell.source, "python", title), *rendered]))
    if outputs is not None and outputs.missed:
        log.info(
            "%s: %d cell(s) changed since %s was executed; shown without output",
            py.name,
            outputs.missed,
            executed,
        )
    return "\n\n".join(blocks) + "\n", images


def _about_box(py: pathlib.Path, number: int, executed: pathlib.Path | None) -> str:
    where = (
        "The outputs below come from a run of this lesson with the reference solutions in "
        "place of the exercises."
        if executed
        else "This page shows the code without its outputs; run the cells to see them."
    )
    return _admonition(
        "tip",
        "Work through it yourself",
        f"Open `lessons/{py.stem}.ipynb` in JupyterLab (`make lab`) and run it cell by cell. "
        f"Grade your exercises with `make grade LESSON={number}`. {where}",
    )


def _exercise_box(source: str, lesson: int, ordinal: int, rendered: list[str]) -> str:
    found = EXERCISE_LABEL.search(source)
    label = found[1] if found else f"{lesson}.{ordinal}"
    names = _defined_functions(source)
    title = f"Exercise {label}" + (": " + ", ".join(f"`{n}`" for n in names) if names else "")
    exercise_id = "ex" + label.replace(".", "_")
    body = (
        "Replace the `raise NotImplementedError(...)` with your code, run the cell, then the "
        f"check below it. From a terminal: `pytest -m lesson{lesson} -k {exercise_id}`.\n\n"
        + "\n\n".join([_fence(source, "python"), *rendered])
    )
    return _admonition("question", title, body)


def _check_box(source: str, rendered: list[str]) -> str:
    found = CHECK_CALL.search(source)
    title = f"Check of exercise {found[1]}.{found[2]}" if found else "Check"
    body = "\n\n".join([_fence(source, "python"), *rendered])
    return _admonition("success", title, body, folded=True)


def _defined_functions(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a learner's cell may not parse; the page still shows it
        return []
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]


def overview_page(lessons: list[pathlib.Path]) -> str:
    """The "Lessons" landing page: a table of every lesson with its exercises and time."""
    rows = []
    for path in lessons:
        notebook = jupytext.read(path)
        title = _title(notebook) or path.stem
        exercises = sum(
            "exercise" in cell.metadata.get("tags", [])
            for cell in notebook.cells
            if cell.cell_type == "code"
        )
        rows.append(f"| [{title}]({path.stem}.md) | {exercises} | {_time_line(notebook)} |")
    return "\n".join(
        [
            "# Lessons",
            "",
            "Nine lessons rebuild the fine-tuning notebook one stage at a time. Each one opens "
            "with what you will learn, explains with small cells you can run, and asks you to "
            "write a few functions. A check cell after each exercise grades it on the spot; "
            "[Getting started](../getting-started.md#how-grading-works) explains the grading.",
            "",
            "| lesson | exercises | time |",
            "| --- | --- | --- |",
            *rows,
            "",
            "Every exercise has a reference solution in `solutions/` with the same name and "
            "signature; the [API reference](../reference/index.md) documents them.",
            "",
        ]
    )


def _title(notebook) -> str | None:
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return None


def _time_line(notebook) -> str:
    """The start of the lesson's own "**Time:** ..." line, up to its first full stop or
    semicolon (e.g. "about 30 minutes"), when its first cell has one."""
    first = next((c for c in notebook.cells if c.cell_type == "markdown"), None)
    if first is None:
        return ""
    found = re.search(r"\*\*Time:\*\*\s*([^.;]+)", first.source)
    return " ".join(found[1].split()) if found else ""


# ----------------------------------------------------------------------------- outputs


class CellOutputs:
    """The outputs of an executed notebook, handed out to the `.py`'s cells.

    An exercise cell takes the outputs of the executed notebook's exercise cell
    at the same position (its code there is the reference solution's import);
    any other cell takes those of the executed cell with exactly its code.
    """

    def __init__(self, executed):
        self._by_source = defaultdict(deque)
        self._exercises = deque()
        for cell in executed.cells:
            if cell.cell_type != "code":
                continue
            if "exercise" in cell.metadata.get("tags", []):
                self._exercises.append(cell.get("outputs", []))
            else:
                self._by_source[cell.source].append(cell.get("outputs", []))
        self.missed = 0  # code cells that found no executed twin

    def take(self, cell, tags: set[str]) -> list:
        queue = self._exercises if "exercise" in tags else self._by_source.get(cell.source)
        if not queue:
            self.missed += 1
            return []
        return queue.popleft()


def render_outputs(
    outputs: list, stem: str, images: dict[str, bytes], prefix: str, *, boxed: bool = False
) -> list[str]:
    """Markdown blocks for a cell's outputs; images go into `images` as `stem-K.ext`.

    Blocks carry the class `cell-output` through attributes rather than an HTML
    wrapper, so they render the same inside an exercise or check box (`boxed`),
    where raw HTML cannot go: there an HTML output shows as its text form.
    """
    blocks = []
    for output in _merge_streams(outputs):
        kind = output.get("output_type")
        if kind == "stream":
            text = _clean_text(output["text"])
            if output.get("name") == "stderr":
                text = _without_runtime_logs(text)
            if text.strip():
                blocks.append(_output_fence(text))
        elif kind == "error":
            text = _clean_text("\n".join(output.get("traceback", [])))
            blocks.append(_output_fence(text or output.get("evalue", "")))
        elif kind in ("display_data", "execute_result"):
            block = _rich_output(output.get("data", {}), stem, images, prefix, boxed)
            if block:
                blocks.append(block)
    return blocks


def _merge_streams(outputs: list) -> list:
    """Joins consecutive pieces of the same stream, as Jupyter shows them."""
    merged = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            output.get("output_type") == "stream"
            and previous is not None
            and previous.get("output_type") == "stream"
            and previous.get("name") == output.get("name")
        ):
            previous["text"] += output["text"]
        else:
            merged.append(dict(output))
    return merged


def _clean_text(text: str) -> str:
    """Drops colour codes, and keeps what a terminal shows of lines rewritten with \\r
    (progress bars)."""
    text = ANSI_ESCAPE.sub("", text)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n")).rstrip("\n")


def _without_runtime_logs(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not RUNTIME_LOG_LINE.match(line))


def _rich_output(
    data: dict, stem: str, images: dict[str, bytes], prefix: str, boxed: bool
) -> str | None:
    """The richest form of a display output Markdown can hold: an image, an HTML or Markdown
    block, or text."""
    for mime, extension in IMAGE_TYPES.items():
        if mime in data:
            name = f"{stem}-{len(images) + 1}.{extension}"
            payload = data[mime]
            images[name] = (
                payload.encode() if mime == "image/svg+xml" else base64.b64decode(payload)
            )
            return f"![output]({prefix}{name}){{ .cell-output }}"
    for mime in TEXT_TYPES:
        if mime in data and not (boxed and mime == "text/html"):
            text = _joined(data[mime])
            if mime == "text/html":
                return f'<div class="cell-output">\n{text.strip()}\n</div>'
            if mime == "text/markdown":
                return _admonition("quote", "", _demote_headings(text))
            return _output_fence(_clean_text(text))
    return None


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def _demote_headings(markdown: str) -> str:
    """Headings in an output would enter the page's table of contents; make them bold."""
    return re.sub(r"^#{1,6}\s+(.+)$", r"**\1**", markdown, flags=re.MULTILINE)


# ----------------------------------------------------------------------------- markdown helpers


def _fence(code: str, language: str, title: str | None = None) -> str:
    """A fenced block longer than any run of backticks inside `code`."""
    ticks = _ticks(code)
    header = f'{ticks}{language} title="{title}"' if title else f"{ticks}{language}"
    return f"{header}\n{code.rstrip()}\n{ticks}"


def _output_fence(text: str) -> str:
    """Plain text output, marked with the class `cell-output`."""
    ticks = _ticks(text)
    return f"{ticks}{{ .text .cell-output }}\n{text}\n{ticks}"


def _ticks(code: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def _admonition(kind: str, title: str, body: str, folded: bool = False) -> str:
    marker = "???" if folded else "!!!"
    indented = "\n".join(f"    {line}" if line.strip() else "" for line in body.splitlines())
    return f'{marker} {kind} "{title}"\n\n{indented}'
