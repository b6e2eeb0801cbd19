"""`make test-lessons` runs the lessons with nbval and keeps what they printed for the website.

A three-second check on a notebook written here, one kernel: the real lessons take minutes
and run in CI (`make test-lessons`).
"""

from __future__ import annotations

import nbformat

from tests import execute_lessons

CELLS = [
    "print('one')",
    # Lesson 7 redraws its loss curve this way: only the last frame may stay.
    "from IPython.display import clear_output, display\n"
    "for frame in range(3):\n"
    "    clear_output(wait=True)\n"
    "    display(f'frame {frame}')",
    "1 + 1",
    "raise ValueError('a lesson that breaks')",
    "print('never reached')",
]


def test_nbval_runs_the_cells_and_their_outputs_stay_in_the_notebook(tmp_path):
    path = tmp_path / "05_sample.ipynb"
    notebook = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    )
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbformat.write(notebook, path)

    exit_code, keep = execute_lessons.run_notebooks([path])

    assert exit_code != 0 and keep.failed == {path}
    assert 0 < keep.seconds[path] < 120
    printed, redrawn, result, error, skipped = nbformat.read(path, as_version=4).cells
    assert [(o.output_type, o.text) for o in printed.outputs] == [("stream", "one\n")]
    assert [o.data["text/plain"] for o in redrawn.outputs] == ["'frame 2'"]
    assert [(o.execution_count, o.data["text/plain"]) for o in result.outputs] == [(3, "2")]
    assert [(o.ename, o.evalue) for o in error.outputs] == [("ValueError", "a lesson that breaks")]
    assert skipped.outputs == [] and skipped.execution_count is None
    nbformat.validate(nbformat.read(path, as_version=4))
