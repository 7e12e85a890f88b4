"""Every layout ``--data`` reads, on small files written in it: folder per identity, CSV/TSV list,
MSMT17, CUHK03-NP, Occluded-DukeMTMC, Occluded-REID, Partial-REID; the split by identity, the camera
rule, occlusion shares, and one line naming a bad row or file."""

import json
import os
import shutil

import numpy as np
import pytest

import layout_files as files
from aaa_keras.data import layouts
from aaa_keras.data.check import check_data, check_dataset, format_report
from aaa_keras.data.layouts import load_dataset
from aaa_keras.errors import DatasetError, UserError


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# === folder:DIR ===

def test_a_folder_per_identity_with_cameras_is_split_by_identity_as_market_is(tmp_path):
    root = files.folder_dataset(tmp_path / "crops", ids=10, cams=3, per_camera=2)
    dataset = load_dataset(f"folder:{root}")
    assert dataset.layout.startswith("folder")
    train_ids = {r.pid for r in dataset.train}
    test_ids = {r.pid for r in dataset.query} | {r.pid for r in dataset.gallery}
    # test fraction 0.5: each identity by its own hash draw, so about half, never all on one side
    assert train_ids | test_ids == set(range(1, 11)) and not train_ids & test_ids
    assert 2 <= len(test_ids) <= 8
    assert {r.camid for r in dataset.train} == {1, 2, 3}  # camera folders cam1..cam3
    # one query per test identity and camera, the rest gallery, no image in both
    queries = [(r.pid, r.camid) for r in dataset.query]
    assert sorted(queries) == sorted({(pid, cam) for pid in test_ids for cam in (1, 2, 3)})
    assert len(dataset.gallery) == len(test_ids) * 3 * 2 - len(queries)
    assert not {r.path for r in dataset.query} & {r.path for r in dataset.gallery}
    # deterministic; another seed or test fraction gives another split
    again = load_dataset(f"folder:{root}")
    assert [r.path for r in again.query] == [r.path for r in dataset.query]
    other = load_dataset(f"folder:{root}?seed=3")
    assert {r.pid for r in other.train} != train_ids
    smaller = {r.pid for r in load_dataset(f"folder:{root}?test-fraction=0.3").query}
    assert smaller and smaller <= test_ids  # a lower fraction keeps a subset of the test identities


def _sides(dataset) -> dict[str, str]:
    """Identity folder name -> "train" or "test"."""
    def name(record):
        return os.path.relpath(record.path, dataset.root).split(os.sep)[0]
    sides = {name(r): "train" for r in dataset.train}
    sides.update({name(r): "test" for r in dataset.query + dataset.gallery})
    return sides


@pytest.mark.parametrize("names", [None, [f"person{i:02d}" for i in range(20)]])
def test_adding_or_removing_an_identity_moves_no_other_identity_between_train_and_test(tmp_path, names):
    root = files.folder_dataset(tmp_path / "crops", ids=20, cams=2, per_camera=1, camera_level=True, names=names)
    before = _sides(load_dataset(f"folder:{root}"))
    assert set(before.values()) == {"train", "test"}
    added = "0000aaa" if names else "0021"  # a named one sorts first, renumbering every other identity
    files.write_image(os.path.join(root, added, "cam1", "a.jpg"), 21)
    files.write_image(os.path.join(root, added, "cam2", "b.jpg"), 21)
    after = _sides(load_dataset(f"folder:{root}"))
    assert {k: v for k, v in after.items() if k != added} == before
    removed = sorted(before)[3]
    shutil.rmtree(os.path.join(root, removed))
    fewer = _sides(load_dataset(f"folder:{root}"))
    assert fewer == {k: v for k, v in after.items() if k != removed}


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_two_identities_keep_one_on_each_side_whatever_the_fraction(tmp_path, fraction):
    root = files.folder_dataset(tmp_path / "crops", ids=2, cams=2, per_camera=2)
    dataset = load_dataset(f"folder:{root}?test-fraction={fraction}")
    assert len({r.pid for r in dataset.train}) == 1 and len({r.pid for r in dataset.gallery}) == 1


def test_identity_folders_with_names_are_numbered_and_a_camera_pattern_reads_cameras(tmp_path):
    names = ["alice", "bob", "carol", "dave"]
    root = files.folder_dataset(tmp_path / "crops", ids=4, cams=2, per_camera=2, camera_level=False, names=names)
    plain = load_dataset(f"folder:{root}")
    assert {r.pid for r in plain.train + plain.query + plain.gallery} == {1, 2, 3, 4}
    assert {r.camid for r in plain.train + plain.query + plain.gallery} == {1}
    assert any("single camera" in note for note in plain.notes)
    spec = layouts.with_camera_pattern(f"folder:{root}", r"_c(?P<cam>\d+)_")
    assert spec == f"folder:{root}?camera-pattern=_c(?P<cam>\\d+)_"
    patterned = load_dataset(spec)
    assert {r.camid for r in patterned.train + patterned.query + patterned.gallery} == {1, 2}
    assert all(f"_c{r.camid}_" in os.path.basename(r.path) for r in patterned.query + patterned.gallery)


def test_a_folder_with_train_query_gallery_keeps_that_split(tmp_path):
    root = tmp_path / "given"
    files.folder_dataset(root / "train", ids=3, cams=2, per_camera=1)
    files.folder_dataset(root / "query", ids=2, cams=1, per_camera=1, names=["0007", "0008"])
    files.folder_dataset(root / "gallery", ids=2, cams=2, per_camera=1, names=["0007", "0008"])
    dataset = load_dataset(f"folder:{root}")
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (6, 2, 4)
    assert {r.pid for r in dataset.query} == {7, 8} and {r.pid for r in dataset.train} == {1, 2, 3}


@pytest.mark.parametrize("make, fragment", [
    (lambda root: files.write_image(root / "loose.jpg"), "loose.jpg"),
    (lambda root: (files.write_image(root / "0001" / "a.jpg"), files.write_image(root / "0001" / "c1" / "b.jpg")),
     "holds both images and sub-folders"),
])
def test_a_malformed_folder_is_one_line_naming_it(tmp_path, make, fragment):
    root = tmp_path / "crops"
    files.folder_dataset(root, ids=2, cams=1, per_camera=2)
    make(root)
    with pytest.raises(DatasetError) as caught:
        load_dataset(f"folder:{root}")
    assert fragment in one_line(caught)


def test_identity_folders_1_and_01_are_refused_naming_both(tmp_path):
    root = files.folder_dataset(tmp_path / "crops", ids=3, cams=1, per_camera=1, names=["1", "01", "2"])
    with pytest.raises(DatasetError) as caught:
        load_dataset(f"folder:{root}")
    message = one_line(caught)
    assert "01/ and 1/" in message and "person id 1" in message and str(root) in message


def test_bad_spec_options_and_patterns_are_named(tmp_path):
    root = files.folder_dataset(tmp_path / "crops", ids=2, cams=1, per_camera=2, camera_level=False)
    for spec, fragment in ((f"folder:{root}?test-fraction=2", "test-fraction=2"),
                           (f"folder:{root}?colour=red", "'colour=red'"),
                           (f"folder:{root}?seed=x", "seed=x")):
        with pytest.raises(UserError, match=fragment):
            layouts.parse_spec(spec)
    with pytest.raises(UserError, match="group named cam"):
        layouts.with_camera_pattern(f"folder:{root}", r"_c(\d+)")
    with pytest.raises(UserError, match="applies to --data folder:DIR or csv:FILE"):
        layouts.with_camera_pattern(str(root), r"_c(?P<cam>\d+)")
    with pytest.raises(DatasetError) as caught:
        load_dataset(layouts.with_camera_pattern(f"folder:{root}", r"cam(?P<cam>\d+)"))
    assert "does not match" in one_line(caught)


# === csv:FILE ===

def _csv(tmp_path, rows, name="list.csv", header="path,pid,camid,split"):
    path = tmp_path / name
    separator = "\t" if name.endswith(".tsv") else ","
    lines = ([header.replace(",", separator)] if header else []) + [separator.join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_list_with_splits_and_a_tsv_without(tmp_path):
    rows = []
    for pid in (1, 2, 3, 4):
        for cam in (1, 2):
            image = files.write_image(tmp_path / "img" / f"p{pid}_{cam}.png", pid, cam)
            split = "train" if pid <= 2 else ("query" if cam == 1 else "gallery")
            rows.append((os.path.relpath(image, tmp_path), pid, cam, split))
    dataset = load_dataset(f"csv:{_csv(tmp_path, rows)}")
    assert dataset.layout.startswith("CSV")
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (4, 2, 2)
    commented = _csv(tmp_path, rows, "commented.csv", header="# my list\n\npath,pid,camid,split")
    assert len(load_dataset(f"csv:{commented}").train) == 4  # the header on the first non-comment row
    tabbed = _csv(tmp_path, rows, "tabbed.txt", header="# my list\npath,pid,camid,split")
    tabbed.write_text(tabbed.read_text().replace(",", "\t"))
    assert len(load_dataset(f"csv:{tabbed}").train) == 4  # tabs seen on the first non-comment row
    tsv = _csv(tmp_path, [r[:3] for r in rows], "list.tsv", header="")
    unsplit = load_dataset(f"csv:{tsv}")
    # 2 test ids with one image per camera: one query each, so that each keeps a gallery image
    assert len({r.pid for r in unsplit.train}) == 2 and len(unsplit.query) == 2 and len(unsplit.gallery) == 2
    assert all(q.camid == 1 for q in unsplit.query) and all(g.camid == 2 for g in unsplit.gallery)


def test_an_empty_csv_camid_is_read_by_the_camera_pattern_or_is_camera_1(tmp_path):
    rows = [(os.path.relpath(files.write_image(tmp_path / f"c{cam}" / f"{pid}_{k}.jpg", pid, k), tmp_path), pid, "")
            for pid in (1, 2, 3, 4) for cam in (1, 2) for k in (cam, cam + 2)]
    path = _csv(tmp_path, rows, header="")
    assert {r.camid for r in (lambda d: d.train + d.query + d.gallery)(load_dataset(f"csv:{path}"))} == {1}
    spec = layouts.with_camera_pattern(f"csv:{path}", r"^c(?P<cam>\d+)/")
    dataset = load_dataset(spec)
    assert all(os.path.basename(os.path.dirname(r.path)) == f"c{r.camid}" for r in dataset.train + dataset.gallery)
    assert {r.camid for r in dataset.query} == {1, 2}


@pytest.mark.parametrize("row, fragment", [
    (("img/x.png", "abc", 1, "train"), "person id 'abc'"),
    (("img/x.png", 1, 1, "valid"), "split 'valid'"),
    (("img/missing.png", 1, 1, "train"), "does not exist"),
    (("img/x.png", 1), "2 fields"),
])
def test_a_bad_csv_row_is_one_line_naming_the_file_and_line(tmp_path, row, fragment):
    files.write_image(tmp_path / "img" / "x.png")
    path = _csv(tmp_path, [("img/x.png", 1, 1, "train"), row])
    with pytest.raises(DatasetError) as caught:
        load_dataset(f"csv:{path}")
    message = one_line(caught)
    assert f"{path} line 3" in message and fragment in message


# === MSMT17, CUHK03-NP, Occluded-DukeMTMC ===

@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_lists(tmp_path, version):
    root = files.msmt17(tmp_path / f"MSMT17_{version}", version)
    for data in (root, str(tmp_path)):  # the version folder, or its parent
        dataset = load_dataset(data)
        assert dataset.layout == f"MSMT17 ({version})"
        assert len(dataset.train) == 7 and {r.pid for r in dataset.train} == {1, 2, 3}  # train + val, L + 1
        assert {r.pid for r in dataset.query} == {100001, 100002}  # test labels restart at 0: kept apart
        assert {r.camid for r in dataset.gallery} == {2, 7} and {r.camid for r in dataset.train} == {1, 3, 5}


def test_a_bad_msmt17_line_is_named(tmp_path):
    root = files.msmt17(tmp_path / "MSMT17_V1", bad_line="0001/0001_x.jpg 1")
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert "list_gallery.txt line 5" in one_line(caught) and "third '_' field" in str(caught.value)


def test_cuhk03_np_root_holds_two_protocols(tmp_path):
    root = files.cuhk03_np(tmp_path / "cuhk03-np")
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert "labeled" in one_line(caught) and "detected" in str(caught.value)
    labeled = load_dataset(os.path.join(root, "labeled"))
    assert labeled.layout == "CUHK03-NP labeled" and {r.camid for r in labeled.gallery} == {1, 2}
    reports = check_data(root, decode=False)
    assert [r.layout for r in reports] == ["CUHK03-NP labeled", "CUHK03-NP detected"]
    assert all(r.ok for r in reports)


def test_cuhk03_names_outside_a_cuhk03_directory_still_do_not_parse(tmp_path):
    root = files.market_dataset(tmp_path / "market", {
        "train": ["0001_c1_1.png"], "query": ["0002_c1_1.png"], "gallery": ["0002_c2_1.png"]})
    with pytest.raises(DatasetError, match="does not parse"):
        load_dataset(root)


def test_occluded_duke_is_recognised_by_its_directory_name(tmp_path):
    names = {"train": files.duke_names([1, 2]), "query": files.duke_names([3], cams=1),
             "gallery": files.duke_names([3, 4])}
    assert load_dataset(files.market_dataset(tmp_path / "DukeMTMC-reID", names)).layout == "DukeMTMC-reID"
    occluded = check_dataset(files.market_dataset(tmp_path / "Occluded_Duke", names), decode=False)
    assert occluded.layout == "Occluded-DukeMTMC" and occluded.naming == "DukeMTMC-reID"
    assert "every query is occluded" in format_report(occluded)


# === Occluded-REID, Partial-REID ===

@pytest.mark.parametrize("make, layout, word", [
    (files.occluded_reid, "Occluded-REID", "occluded"), (files.partial_reid, "Partial-REID", "partial")])
def test_occluded_and_partial_reid_are_evaluation_only_with_query_and_gallery_cameras(tmp_path, make, layout, word):
    root = make(tmp_path / layout.replace("-", "_"))
    dataset = load_dataset(root)
    assert dataset.layout == layout and dataset.train == []
    assert {r.camid for r in dataset.query} == {1} and {r.camid for r in dataset.gallery} == {2}
    assert {r.pid for r in dataset.query} == {r.pid for r in dataset.gallery} == {1, 2, 3}
    report = check_dataset(root)
    text = format_report(report)
    assert report.ok and f"layout {layout}" in text
    assert f"every query is {word} by definition" in text and "6 of 6 queries have a match" in text


def test_tiff_images_are_counted_and_named_with_their_conversion(tmp_path):
    root = files.occluded_reid(tmp_path / "Occluded_REID", ext=".tif")
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert "TIFF" in one_line(caught) and "python -m aaa_keras.data.layouts_bench" in str(caught.value)
    report = check_dataset(root)
    assert report.splits["query"].num_images == 6 and any("TIFF" in w for w in report.warnings)
    from aaa_keras.data.layouts_bench import convert_to_png

    assert convert_to_png(root, str(tmp_path / "png"), log=lambda _: None) == 12
    converted = load_dataset(str(tmp_path / "png"))
    assert converted.layout == "Occluded-REID" and len(converted.gallery) == 6


# === data check: the camera rule, occlusion.json, every --data name ===

def test_single_camera_data_names_both_fixes_in_one_warning(tmp_path):
    root = files.folder_dataset(tmp_path / "crops", ids=4, cams=1, per_camera=3, camera_level=False)
    report = check_dataset(f"folder:{root}", decode=False)
    [warning] = [w for w in report.warnings if "no valid query" in w]
    assert "distinct camera ids" in warning and "--same-camera-ok" in warning
    assert "0 of 2 queries have a match" in format_report(report)


def test_occlusion_json_gives_the_share_of_occluded_images(tmp_path):
    names = {"train": files.duke_names([1, 2]), "query": files.duke_names([3, 4], cams=1),
             "gallery": files.duke_names([3, 4])}
    root = files.market_dataset(tmp_path / "synth", names)
    # a name that is in no split (a stale list) is not counted
    occluded = {"query": names["query"], "gallery": names["gallery"][:1] + ["9999_c1_f0000001.jpg"], "train": []}
    (tmp_path / "synth" / "occlusion.json").write_text(json.dumps({"occluded": occluded}))
    text = format_report(check_dataset(root, decode=False))
    assert "query 100.0 % (2 of 2), gallery 25.0 % (1 of 4), train 0.0 % (0 of 4)" in text
    (tmp_path / "synth" / "occlusion.json").write_text("{not json")
    assert any("occlusion.json: not read" in w for w in check_dataset(root, decode=False).warnings)


def test_data_check_accepts_a_builtin_name(monkeypatch):
    from aaa_keras.data import synth

    monkeypatch.setitem(synth.BUILTIN_SIZES, "demo", dict(num_ids=6, num_cams=2, seed=0))
    [report] = check_data("builtin:demo", decode=False, log=lambda _: None)
    assert report.layout == "Market-1501" and report.splits["query"].num_images > 0


def test_an_unknown_directory_names_the_layouts_and_folder_spec(tmp_path):
    files.folder_dataset(tmp_path / "crops", ids=2, cams=1, per_camera=1)
    with pytest.raises(DatasetError) as caught:
        load_dataset(str(tmp_path / "crops"))
    assert "folder:" in one_line(caught) and "MSMT17" in str(caught.value)
    partial = files.partial_reid(tmp_path / "downloads" / "Partial_REID")
    with pytest.raises(DatasetError) as caught:
        load_dataset(str(tmp_path / "downloads"))
    assert f"but in {partial}" in one_line(caught)


# === --same-camera-ok ===

def test_same_camera_ok_keeps_same_camera_matches_but_never_the_query_image():
    from aaa_keras.evaluation.rank import evaluate_rank, same_camera_ok_cameras

    # one camera; query 0 is also in the gallery (index 0): it must not count as its own match
    q_paths, g_paths = ["a.jpg", "b.jpg"], ["a.jpg", "a2.jpg", "b2.jpg", "c.jpg"]
    q_pids, g_pids = np.array([1, 2]), np.array([1, 1, 2, 3])
    distances = np.array([[0.0, 0.5, 0.9, 0.2], [0.9, 0.8, 0.1, 0.7]])
    with pytest.raises(UserError, match="--same-camera-ok"):
        evaluate_rank(distances, q_pids, g_pids, np.ones(2, int), np.ones(4, int))
    q_cams, g_cams = same_camera_ok_cameras(q_paths, g_paths)
    result = evaluate_rank(distances, q_pids, g_pids, q_cams, g_cams)
    # query a: a.jpg removed, c.jpg (0.2) first, a2 (0.5) second -> AP 1/2; query b: b2 first -> AP 1
    assert result["num_valid"] == 2 and result["mAP"] == pytest.approx(0.75)
    assert result["cmc"][0] == pytest.approx(0.5)


# === The query picker ===

def _unmatched(query, gallery) -> list:
    cameras = {}
    for record in gallery:
        cameras.setdefault(record.pid, set()).add(record.camid)
    return [r for r in query if not cameras.get(r.pid, set()) - {r.camid}]


def test_every_picked_query_has_a_gallery_match_from_another_camera():
    from aaa_keras.data.layouts_custom import pick_queries

    # cameras 1 (two images) and 2 (one): one camera-1 query, the camera-2 image stays in the gallery
    three = [("a.jpg", 7, 1), ("b.jpg", 7, 1), ("c.jpg", 7, 2)]
    query, gallery = pick_queries(three, seed=0)
    assert len(query) == 1 and query[0].camid == 1 and not _unmatched(query, gallery)
    assert [r.path for r in gallery if r.camid == 2] == ["c.jpg"]
    # a realistic spread: 200 ids, 2-3 cameras each (of 6), Poisson(1.5) + 1 images per camera
    rng = np.random.default_rng(5)
    test = []
    for pid in range(1, 201):
        for cam in rng.choice(6, size=int(rng.integers(2, 4)), replace=False) + 1:
            test += [(f"{pid}_{cam}_{k}.jpg", pid, int(cam)) for k in range(int(rng.poisson(1.5)) + 1)]
    for seed in range(3):
        query, gallery = pick_queries(test, seed)
        assert not _unmatched(query, gallery)
        assert len({r.pid for r in query}) == 200 and len(query) + len(gallery) == len(test)
    # single-camera data still gives queries (for --same-camera-ok), each keeping a gallery image
    query, gallery = pick_queries([("a.jpg", 1, 1), ("b.jpg", 1, 1), ("c.jpg", 2, 1)], seed=0)
    assert [r.pid for r in query] == [1] and len(gallery) == 2


@pytest.mark.parametrize("cams", [1, 3])
def test_data_check_warns_when_no_query_is_left_and_strict_fails(tmp_path, cams):
    # one image per identity (one camera), or each identity in one camera of three: no query can be made
    root = tmp_path / "crops"
    for pid in range(1, 13):
        files.write_image(os.path.join(str(root), f"{pid:04d}", f"cam{pid % cams + 1}", "a.jpg"), pid)
        if cams > 1:
            files.write_image(os.path.join(str(root), f"{pid:04d}", f"cam{pid % cams + 1}", "b.jpg"), pid)
    report = check_dataset(f"folder:{root}", decode=False)
    assert report.splits["query"].num_images == 0
    assert any("no query image" in warning for warning in report.warnings) and not report.ok
    with pytest.raises(DatasetError, match="strict check failed: .*no query image"):
        check_dataset(f"folder:{root}", strict=True, decode=False)


def test_evaluating_a_run_on_its_own_changed_data_gives_a_one_line_warning(tmp_path):
    import types

    from aaa_keras.data.names import dataset_fingerprint
    from aaa_keras.data.source import own_data_changed

    spec = f"folder:{files.folder_dataset(tmp_path / 'crops', ids=8, cams=2, per_camera=1)}"
    config = types.SimpleNamespace(data=spec, dataset_fingerprint=dataset_fingerprint(load_dataset(spec)))
    assert own_data_changed(config, None, load_dataset(spec), spec) is None
    files.write_image(tmp_path / "crops" / "0009" / "cam1" / "a.jpg", 9)
    files.write_image(tmp_path / "crops" / "0009" / "cam2" / "b.jpg", 9)
    changed = load_dataset(spec)
    for data in (None, spec):
        warning = own_data_changed(config, data, changed, spec)
        assert warning.startswith(f"warning: {spec} no longer matches") and "\n" not in warning
    assert own_data_changed(config, str(tmp_path / "other"), changed, spec) is None  # other data: by choice
