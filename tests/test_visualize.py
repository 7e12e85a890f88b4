"""Pictures: every picture function (aaa_keras.plots) writes a PNG of its layout's pixel size; visualize_run."""

import math
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from aaa_keras import plots, visualize
from aaa_keras.data.layouts import load_dataset
from aaa_keras.data.names import ImageRecord
from aaa_keras.errors import RunDirError, UserError
from aaa_keras.model.occlusion import grid_cells


def _png_shape(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 0, path
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path).shape


def _assert_size(path, size_inches):
    """The PNG at ``path`` is ``size_inches`` at plots.DPI (to the pixel: Agg truncates)."""
    height, width, channels = _png_shape(path)
    assert channels in (3, 4)
    expected_w, expected_h = (s * plots.DPI for s in size_inches)
    assert abs(width - expected_w) <= 1 and abs(height - expected_h) <= 1, (
        f"{path}: {width}x{height} px, expected {expected_w:.0f}x{expected_h:.0f}")


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    """All three stages trained once for this module (tiny_resnet, 2 steps each)."""
    from aaa_keras.config import make_config
    from aaa_keras.training import fit

    config = make_config("demo", recipe="paper", data=tiny_data, backbone="tiny_resnet", batch_size=8, epochs=1,
                         steps_per_epoch=2, attention_filters=16)
    directory = str(tmp_path_factory.mktemp("visualize") / "run")
    fit("adversarial", config, directory, log=lambda *a: None)
    return directory


@pytest.fixture(scope="module")
def all_pictures(run_dir):
    """``visualize_run(what="all")`` once for the module: (paths, log lines)."""
    lines = []
    paths = visualize.visualize_run(run_dir, what="all", num=3, log=lines.append)
    return paths, lines


@pytest.fixture(scope="module")
def baseline_only_run(run_dir, tmp_path_factory):
    """A run dir with only the baseline stage: a copy of the trained run's config and stage 1."""
    directory = tmp_path_factory.mktemp("visualize_baseline") / "run"
    directory.mkdir()
    shutil.copy(os.path.join(run_dir, "config.json"), directory / "config.json")
    shutil.copytree(os.path.join(run_dir, "baseline"), directory / "baseline")
    return str(directory)


@pytest.fixture(scope="module")
def trained_images(run_dir):
    """Network inputs of 3 training images and the adversarial stage's (config, parts, attention)."""
    from aaa_keras.run_dir import load_trained

    trained = load_trained(run_dir, "adversarial")
    config, parts, attention = trained.config, trained.parts, trained.attention
    records = visualize.pick_records(load_dataset(config.data).train_identities(), 3)
    images = visualize.load_images([r.path for r in records], config.image_size)
    return config, parts, attention, records, images


# === Picture functions ===

def test_plots_imports_without_tensorflow():
    code = "import sys, aaa_keras.plots; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr


def test_save_ranked_lists_writes_a_png_of_its_layout_size(tiny_data, tmp_path):
    gallery = load_dataset(tiny_data).gallery
    query = load_dataset(tiny_data).query[0]
    queries = [dict(path=query.path, pid=query.pid, camid=query.camid),
               dict(path=str(tmp_path / "missing.jpg"), pid=None, camid=None)]  # unknown, unreadable
    ranking = [dict(path=g.path, pid=g.pid, camid=g.camid, distance=0.1 * i)
               for i, g in enumerate(gallery[:10])]
    rankings = [ranking, ranking[:4]]  # a short ranking leaves blank panels
    path = plots.save_ranked_lists(str(tmp_path / "sub" / "ranks.png"), queries, rankings, top=6)
    assert path == str(tmp_path / "sub" / "ranks.png")
    _assert_size(path, plots.ranked_lists_size(2, 6))
    assert not [n for n in os.listdir(tmp_path / "sub") if n != "ranks.png"]  # no partial file left
    with pytest.raises(UserError, match="2 queries but 1 rankings"):
        plots.save_ranked_lists(str(tmp_path / "bad.png"), queries, rankings[:1])


def test_plot_attention_maps_writes_a_png_of_its_layout_size(trained_images, tmp_path):
    _, parts, attention, records, images = trained_images
    maps = visualize.compute_attention_maps(parts, attention, images)
    assert maps.shape == (3, *parts.stem.output.shape[1:3])
    ten = [records[i % 3].path for i in range(10)]  # two blocks of MAP_COLUMNS
    stacked = np.concatenate([maps] * 4)[:10]
    path = plots.plot_attention_maps(str(tmp_path / "attention.png"), ten,
                                     {"stage 2": stacked, "stage 3": -stacked[..., None]},
                                     captions=[f"image {i}" for i in range(10)])
    _assert_size(path, plots.attention_maps_size(10, 2))
    assert plots.attention_maps_size(10, 2)[1] == pytest.approx(2 * 3 * plots.MAP_CELL_H + plots.TITLE_H)


def test_plot_grid_occlusions_uses_the_hardest_occlusion_of_the_frozen_network(trained_images, tmp_path):
    config, parts, _, records, images = trained_images
    labels = np.array([0, 1, 2], np.int32)
    result = visualize.compute_grid_occlusions(parts, images, labels, grid_size=4, cells_per_call=8)
    probabilities = result["cell_probabilities"]
    assert probabilities.shape == (3, 16)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_array_equal(result["hardest_cells"], np.argmin(probabilities, axis=1))
    np.testing.assert_array_equal(result["labels"], labels)
    assert result["feature_shape"] == tuple(parts.stem.output.shape[1:3])
    path = plots.plot_grid_occlusions(
        str(tmp_path / "grid.png"), [r.path for r in records], probabilities, result["hardest_cells"],
        grid_cells(*result["feature_shape"], 4), result["base_probabilities"], captions=["a", "b", "c"])
    _assert_size(path, plots.grid_occlusions_size(3, 4))


def test_plot_occlusion_masks_blacks_out_the_top_third(trained_images, tmp_path):
    config, parts, attention, records, images = trained_images
    masks = visualize.compute_occlusion_masks(parts, attention, images, config.occluded_fraction)
    height, width = parts.stem.output.shape[1:3]
    assert masks.shape == (3, height, width)
    occluded = (masks == 0).reshape(3, -1).sum(axis=1)
    np.testing.assert_array_equal(occluded, math.ceil(height * width / 3))
    path = plots.plot_occlusion_masks(str(tmp_path / "masks.png"), images.astype(np.uint8), masks)
    _assert_size(path, plots.occlusion_masks_size(3))


def test_plot_training_curves_has_a_panel_per_logged_metric(run_dir, tmp_path):
    counts = []
    for stage in ("baseline", "attention", "adversarial"):
        log = visualize.read_log(os.path.join(run_dir, stage, "log.csv"))
        counts.append(len(plots.metric_names(log)))
        assert "loss" in plots.metric_names(log)
    path = visualize.plot_training_curves(run_dir, str(tmp_path / "curves.png"))
    _assert_size(path, plots.training_curves_size(counts))


def test_read_log_skips_repeated_headers_and_keeps_the_last_row_of_an_epoch(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss,val_loss\n0,2.0,NA\n1,1.5,NA\nepoch,loss,val_loss\n1,1.4,1.6\n2,1.0,1.2\n")
    log = visualize.read_log(str(path))
    np.testing.assert_array_equal(log["epoch"], [0, 1, 2])
    np.testing.assert_allclose(log["loss"], [2.0, 1.4, 1.0])
    assert np.isnan(log["val_loss"][0]) and log["val_loss"][2] == 1.2
    assert plots.metric_names(log) == ["loss"]  # val_loss is drawn on loss' panel


def test_plot_training_curves_without_logs_says_what_to_train(tmp_path):
    with pytest.raises(RunDirError, match="fit --stage baseline"):
        visualize.plot_training_curves(str(tmp_path))


def test_pick_records_is_deterministic_and_spread_over_ids_and_cameras():
    records = [ImageRecord(f"/d/{pid:04d}_c{cam}s1_{i:06d}_00.jpg", pid, cam)
               for pid in range(1, 21) for cam in (1, 2) for i in range(3)]
    four = visualize.pick_records(records[::-1], 4)
    assert [r.pid for r in four] == [1, 7, 14, 20]
    assert four == visualize.pick_records(records, 4)
    many = visualize.pick_records(records, 45)
    assert len(many) == 45 and len(set(many)) == 45
    assert [r.camid for r in many[:20]] == [1] * 20 and [r.camid for r in many[20:40]] == [2] * 20


# === visualize_run ===

def test_visualize_run_all_writes_every_picture(run_dir, all_pictures):
    paths, lines = all_pictures
    pictures = os.path.join(run_dir, visualize.PICTURES_DIR)
    assert sorted(os.path.basename(p) for p in paths) == sorted([
        "training_curves.png", "ranks_adversarial.png", "attention_maps.png",
        "grid_occlusion_adversarial.png", "occlusion_masks_adversarial.png"])
    for path in paths:
        assert os.path.dirname(path) == pictures
        assert any(path in line for line in lines)  # each path is logged
        _png_shape(path)
    by_name = {os.path.basename(p): p for p in paths}
    _assert_size(by_name["ranks_adversarial.png"], plots.ranked_lists_size(3, 10))
    _assert_size(by_name["attention_maps.png"], plots.attention_maps_size(3, 2))  # stages 2 and 3
    _assert_size(by_name["grid_occlusion_adversarial.png"], plots.grid_occlusions_size(3, 4))
    _assert_size(by_name["occlusion_masks_adversarial.png"], plots.occlusion_masks_size(3))


def test_visualize_attention_draws_the_map_and_the_mask_with_the_hardest_cell(run_dir, tmp_path):
    paths = visualize.visualize_run(run_dir, what="attention", num=3, out_dir=str(tmp_path),
                                    log=lambda *a: None)
    assert sorted(os.path.basename(p) for p in paths) == ["attention_maps.png",
                                                           "occlusion_masks_adversarial.png"]


def test_occlusion_masks_draw_a_red_box_on_the_hardest_cell(trained_images, tmp_path):
    config, parts, attention, records, images = trained_images
    masks = np.ones((len(images), 8, 4), np.float32)  # nothing occluded: only the box is drawn
    image_shape = plots.read_image(records[0].path).shape
    boxes = [plots.cell_boxes(grid_cells(8, 4, 4), image_shape)[0]] * len(images)  # the top-left cell
    plain = plots.plot_occlusion_masks(str(tmp_path / "plain.png"), [r.path for r in records], masks)
    boxed = plots.plot_occlusion_masks(str(tmp_path / "boxed.png"), [r.path for r in records], masks,
                                       hardest_boxes=boxes)

    def red_pixels(path):
        rgb = matplotlib.image.imread(path)[..., :3]
        return int(np.sum((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)))

    assert red_pixels(boxed) - red_pixels(plain) > 100  # three box outlines


def test_visualize_run_attention_on_a_baseline_only_run_names_the_stage_to_train(baseline_only_run):
    for what in ("attention", "occlusion"):
        with pytest.raises(RunDirError, match=r"fit --stage attention --run-dir"):
            visualize.visualize_run(baseline_only_run, what=what, log=lambda *a: None)
    assert not os.path.exists(os.path.join(baseline_only_run, visualize.PICTURES_DIR))


def test_visualize_run_all_on_a_baseline_only_run_skips_attention_pictures(baseline_only_run, tmp_path):
    lines = []
    paths = visualize.visualize_run(baseline_only_run, what="all", num=2, out_dir=str(tmp_path),
                                    log=lines.append)
    assert sorted(os.path.basename(p) for p in paths) == ["ranks_baseline.png", "training_curves.png"]
    assert any("Skipping" in line and "fit --stage attention" in line for line in lines)


def test_visualize_run_rejects_bad_arguments(run_dir, baseline_only_run):
    with pytest.raises(UserError, match="--what"):
        visualize.visualize_run(run_dir, what="everything")
    with pytest.raises(UserError, match="--num"):
        visualize.visualize_run(run_dir, num=0)
    with pytest.raises(RunDirError, match="--stage baseline has no attention branch"):
        visualize.visualize_run(run_dir, stage="baseline", what="attention")
    with pytest.raises(RunDirError, match="fit --stage adversarial"):
        visualize.visualize_run(baseline_only_run, stage="adversarial", what="ranks")
