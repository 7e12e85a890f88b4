"""`index --append` through the real CLI: SIGKILLed at each point of its commit, and two started at once.

The same at the unit level, with every point before and after a compaction, is tests/test_index_append.py
(no TensorFlow, seconds, in the default suite); here the real command with a model, in the slow set
(each case is four TensorFlow start-ups).
"""

import os
import shutil
import signal
import sqlite3

import pytest

from conftest import cli, succeeded


def _state(index):
    connection = sqlite3.connect(os.path.join(index, "meta.sqlite"))
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        rows = connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    finally:
        connection.close()
    return rows, int(meta["ntotal"]), meta.get("deltas", "")


def _folders(tiny_data, tmp_path):
    """The gallery split, and two small folders of new crops (query images, split in two)."""
    queries = sorted(os.listdir(os.path.join(tiny_data, "query")))
    folders = []
    for part, names in enumerate((queries[::2], queries[1::2])):
        folder = tmp_path / f"new{part}"
        folder.mkdir()
        for name in names:
            shutil.copy(os.path.join(tiny_data, "query", name), folder / name)
        folders.append((folder, len(names)))
    return os.path.join(tiny_data, "bounding_box_test"), folders


@pytest.mark.slow  # four CLI runs with TensorFlow (86 s on the shared machine); the default suite has the unit level
@pytest.mark.parametrize("point", ["rows_inserted_not_committed", "new_file_written", "committed_not_cleaned_up"])
def test_a_killed_append_leaves_an_index_that_verifies_and_takes_the_next_append(point, trained, tiny_data, tmp_path):
    gallery, [(new, count), _] = _folders(tiny_data, tmp_path)
    index = tmp_path / "index"
    succeeded(cli("index", "--model", trained["model"], "--gallery", gallery, "--out", index))
    result = cli("index", "--model", trained["model"], "--gallery", new, "--out", index, "--append",
                 fault=f"sigkill-at:{point}")
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr

    committed = point == "committed_not_cleaned_up"
    size = 43 + (count if committed else 0)
    assert _state(index)[:2] == (size, size)
    assert f"{size} rows = {size} vectors" in succeeded(cli("index", "--verify", "--out", index))
    # Appending again adds what is missing (nothing after the commit), and the leftovers are gone.
    output = succeeded(cli("index", "--model", trained["model"], "--gallery", new, "--out", index, "--append"))
    assert f"{0 if committed else count} images added, {43 + count} in the index" in output, output
    rows, ntotal, deltas = _state(index)
    assert rows == ntotal == 43 + count
    live = {"vectors.0.faiss", *(f"delta.{g}.faiss" for g in deltas.split(",") if g)}
    assert set(os.listdir(index)) - {"meta.sqlite"} == live


@pytest.mark.slow
def test_two_cli_appends_started_together_both_land(trained, tiny_data, tmp_path):
    gallery, folders = _folders(tiny_data, tmp_path)
    index = tmp_path / "index"
    succeeded(cli("index", "--model", trained["model"], "--gallery", gallery, "--out", index))
    processes = [cli("index", "--model", trained["model"], "--gallery", folder, "--out", index, "--append",
                     background=True) for folder, _ in folders]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    total = 43 + sum(count for _, count in folders)
    assert _state(index)[:2] == (total, total)
    assert f"{total} rows = {total} vectors" in succeeded(cli("index", "--verify", "--out", index))
