"""The walkthrough notebook: committed stripped, and it runs top to bottom on tiny settings.

The execution test runs every cell with ``nbclient`` in a fresh ``python3``
kernel (synthetic data, three stages, evaluation, pictures, LiteRT, ONNX
Runtime, a FAISS gallery search) with the notebook's own tiny defaults, which
the test states explicitly. It is part of the default test command (about 40 s
on two CPU cores). The notebook with meaningful settings is the same file with
larger ``AAA_NB_*`` values (see its last cell); that is not run by the tests.
"""

import os
import time

import nbformat
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "walkthrough.ipynb")
CELL_TIMEOUT_S = 900


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_valid_and_committed_without_outputs():
    notebook = _read()
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells, "the walkthrough has no code cells"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.get("outputs") == [], f"cell {index} has outputs; strip them before committing"
        assert cell.get("execution_count") is None, (
            f"cell {index} has execution_count {cell.get('execution_count')}; strip it")
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


def test_notebook_settings_come_first_and_read_the_environment():
    """The first code cell holds the settings the test overrides (tiny defaults)."""
    first = next(cell for cell in _read().cells if cell.cell_type == "code")
    for name in ("AAA_NB_WORK_DIR", "AAA_NB_EPOCHS", "AAA_NB_STEPS", "AAA_NB_IDS"):
        assert name in first.source, f"the settings cell does not read {name}"


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work_dir = tmp_path / "work"
    work_dir.mkdir()
    # The kernel inherits this process's environment: tiny settings, the repo on
    # the import path, a private cache, non-interactive matplotlib.
    monkeypatch.setenv("AAA_NB_WORK_DIR", str(work_dir))
    monkeypatch.setenv("AAA_NB_IDS", "8")
    monkeypatch.setenv("AAA_NB_CAMS", "3")
    monkeypatch.setenv("AAA_NB_EPOCHS", "1")
    monkeypatch.setenv("AAA_NB_STEPS", "2")
    monkeypatch.setenv("AAA_NB_IMAGE_SIZE", "64x32")
    monkeypatch.setenv("AAA_NB_BATCH", "8")
    monkeypatch.setenv("AAA_KERAS_VERBOSE", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p))

    notebook = _read()
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": REPO_ROOT}})
    started = time.time()
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"a notebook cell failed:\n{error}")
    seconds = time.time() - started
    print(f"notebook executed in {seconds:.1f} s")

    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    # The pictures were displayed inline, and the data and run went to the work dir.
    images = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 5, f"expected the crops and the visualize_run pictures inline, got {len(images)}"
    assert (work_dir / "synthetic_market").is_dir()
    assert (work_dir / "run" / "adversarial" / "done.json").is_file()
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.output_type == "stream")
    assert "cosine(LiteRT, Keras)" in text
    assert "cosine(ONNX Runtime, Keras) = 1.0000" in text or "cosine(ONNX Runtime, Keras) = 0.9999" in text
    assert "Query " in text and "  1. " in text  # the gallery search printed its ranked lists
    assert (work_dir / "gallery_index" / "meta.sqlite").is_file()
