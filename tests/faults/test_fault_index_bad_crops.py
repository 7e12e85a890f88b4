"""`index` over a folder with unreadable crops: refused naming them, or left out with --skip-bad-images."""

import os
import shutil

from conftest import cli, error_line, succeeded


def test_unreadable_crops_are_named_and_refused_or_skipped_with_the_flag(trained, tiny_data, tmp_path):
    crops = tmp_path / "crops"
    shutil.copytree(os.path.join(tiny_data, "bounding_box_test"), crops)
    names = sorted(os.listdir(crops))
    truncated, text = crops / names[3], crops / "notes.jpg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("not an image\n")
    args = ["index", "--model", trained["model"], "--gallery", crops, "--out", tmp_path / "index"]

    line = error_line(cli(*args), 2)
    assert str(truncated) in line and str(text) in line and "2 images do not decode" in line, line
    assert "--skip-bad-images" in line and "nothing was indexed" in line
    assert not os.path.exists(tmp_path / "index")

    output = succeeded(cli(*args, "--skip-bad-images"))
    summary = [l for l in output.splitlines() if l.startswith("--skip-bad-images: left out 2 images")]
    assert len(summary) == 1 and str(truncated) in summary[0] and str(text) in summary[0], output
    assert f"{len(names) - 1} images added, {len(names) - 1} in the index" in output, output
