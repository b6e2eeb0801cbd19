"""MkDocs hook: one API reference page per module of `solutions/`, from its docstrings.

Each module `solutions/<name>.py`, or package `solutions/<name>/`, gets
`reference/<name>.md`, a page that exists only in memory and holds a mkdocstrings
directive (`::: solutions.<name>`, and one per module of a package),
so a new module appears on the site without anyone writing its page. The
"API reference" section of the nav lists them in course order: the modules a
lesson builds (their docstring's first line says "lesson N"), by lesson, then
the shared infrastructure alphabetically. Modules are read, never imported.
"""

from __future__ import annotations

import ast
import pathlib
import re

from mkdocs.structure.files import File, Files

PAGES = "reference"
NAV_SECTION = "API reference"
LESSON_MENTION = re.compile(r"\blesson (\d+)\b", re.IGNORECASE)


def _root(config) -> pathlib.Path:
    return pathlib.Path(config.config_file_path).resolve().parent


def module_files(root: pathlib.Path) -> list[pathlib.Path]:
    """The modules (files, not `__init__.py`) and packages (folders) of `solutions/`, in
    course order."""
    folder = root / "solutions"
    found = [p for p in folder.glob("*.py") if not p.name.startswith("_")]
    found += [p for p in folder.iterdir() if (p / "__init__.py").is_file()]
    return sorted(found, key=lambda p: (_lesson_of(p) or 100, p.stem))


def _submodules(package: pathlib.Path) -> list[str]:
    """A package's modules, by name, in file order (none for a plain module)."""
    if not package.is_dir():
        return []
    return sorted(p.stem for p in package.glob("*.py") if not p.name.startswith("_"))


def _summary(path: pathlib.Path) -> str:
    """The first line of a module's (or a package's) docstring ("" if it has none)."""
    source = path / "__init__.py" if path.is_dir() else path
    docstring = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    return docstring.strip().split("\n", 1)[0]


def _lesson_of(path: pathlib.Path) -> int | None:
    found = LESSON_MENTION.search(_summary(path))
    return int(found[1]) if found else None


def _lesson_page(root: pathlib.Path, number: int) -> str | None:
    """The site path of lesson `number`'s page, if that lesson exists."""
    found = sorted((root / "lessons").glob(f"{number:02d}_*.py"))
    return f"../lessons/{found[0].stem}.md" if found else None


def on_config(config):
    """Puts one nav entry per module at the end of the "API reference" section."""
    section = next(
        (
            item[NAV_SECTION]
            for item in config.nav or []
            if isinstance(item, dict) and isinstance(item.get(NAV_SECTION), list)
        ),
        None,
    )
    if section is None:
        raise ValueError(f"mkdocs.yml: the nav needs a section named {NAV_SECTION!r}")
    section.extend(
        {f"solutions.{path.stem}": f"{PAGES}/{path.stem}.md"}
        for path in module_files(_root(config))
    )
    return config


def on_files(files: Files, config) -> Files:
    """Adds the index of modules and one page per module."""
    root = _root(config)
    modules = module_files(root)
    for path in modules:
        files.append(
            File.generated(config, f"{PAGES}/{path.stem}.md", content=module_page(root, path))
        )
    files.append(File.generated(config, f"{PAGES}/index.md", content=index_page(root, modules)))
    return files


def on_serve(server, config, builder):
    """`mkdocs serve` rebuilds when a module of `solutions/` changes."""
    server.watch(str(_root(config) / "solutions"))
    return server


def module_page(root: pathlib.Path, path: pathlib.Path) -> str:
    """The page of one module: its title, the lesson that builds it, its docstrings."""
    lines = [f"# solutions.{path.stem}", ""]
    number = _lesson_of(path)
    lesson = _lesson_page(root, number) if number else None
    if lesson:
        lines += [f"Built in [lesson {number}]({lesson}).", ""]
    lines += [f"::: solutions.{path.stem}", ""]
    for name in _submodules(path):  # a package's parts, each documented in full
        lines += [f"::: solutions.{path.stem}.{name}", ""]
    return "\n".join(lines)


def index_page(root: pathlib.Path, modules: list[pathlib.Path]) -> str:
    """The "API reference" landing page: every module, its lesson and its summary line."""
    rows = []
    for path in modules:
        number = _lesson_of(path)
        lesson = _lesson_page(root, number) if number else None
        where = f"[{number}]({lesson})" if lesson else (str(number) if number else "")
        rows.append(f"| [`solutions.{path.stem}`]({path.stem}.md) | {where} | {_summary(path)} |")
    return "\n".join(
        [
            "# API reference",
            "",
            "The reference implementation in `solutions/`: every function a lesson asks you to "
            "write is here under the same name and signature, next to the infrastructure the "
            "lessons and the capstone share. Each page is generated from the module's "
            "docstrings; the source of every function is one click away.",
            "",
            "| module | lesson | what it holds |",
            "| --- | --- | --- |",
            *rows,
            "",
        ]
    )
