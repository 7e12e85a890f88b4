"""Your own data: ``folder:DIR`` (a sub-folder per identity) and ``csv:FILE`` (a list of images).

``folder:DIR``
    ``DIR/<identity>/<image>`` or, with cameras, ``DIR/<identity>/<camera>/<image>``.
    Identity folders named by positive integers keep them as person ids;
    otherwise the identities are numbered 1..N in sorted name order. A camera
    folder level names the camera: its number when every camera folder name
    ends in one (``1``, ``c1``, ``cam01``), else its place among the sorted
    camera names. ``--camera-pattern REGEX`` instead reads the camera from
    the image's path relative to ``DIR`` (``re.search``, the group named
    ``cam``). With neither, every image is camera 1 (see the camera rule in
    ``docs/data.md``). ``DIR/train/``, ``DIR/query/``, ``DIR/gallery/`` (and
    ``DIR/test/``, split into query and gallery below), each a folder per
    identity, give the split themselves.

``csv:FILE``
    One row per image, ``path,pid,camid[,split]``, comma- or tab-separated
    (a ``.tsv`` file or a tab in the first row), an optional header row (the
    first row that is not blank or a ``#`` comment);
    ``path`` relative to the list file's directory (or absolute); ``camid``
    may be empty (then ``--camera-pattern`` on the path, else camera 1);
    ``split`` one of train, query, gallery, test -- given for every row or
    for none. Person id -1 is junk and 0 a distractor, as in Market-1501.

Without a given split the identities are split deterministically and stably:
an identity is a test identity when a hash of ``(seed, its name)`` -- the
folder name, or the CSV's person id -- read as a number in [0, 1) is below
``test_fraction`` (with N >= 2, at least one identity on each side), so
adding or removing identities moves no other identity between train and
test. Each test identity gives one query per camera, picked with a generator
seeded by ``(seed, pid)``, as long as every query keeps a gallery image of
the identity from another camera (single-camera data: any gallery image);
the rest of its images are the gallery, as
Market-1501 was made.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re

import numpy as np

from aaa_keras.data.layouts import DataSpec
from aaa_keras.data.names import JUNK_PID, ImageRecord, ReidDataset, is_image_file
from aaa_keras.errors import DatasetError

SPLIT_FOLDERS = ("train", "query", "gallery", "test")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def load_spec(spec: DataSpec) -> ReidDataset:
    path = os.path.abspath(os.path.expanduser(spec.path))
    if spec.kind == "folder":
        if not os.path.isdir(path):
            what = "is not a directory" if os.path.exists(path) else "does not exist"
            raise DatasetError(f"folder:{path}: {what}; expected a directory with a sub-folder per identity")
        rows, split_given, names = _folder_rows(path, spec)
        layout, sources = "folder (a sub-folder per identity)", {"all": path}
    else:
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            raise DatasetError(f"csv:{path}: {what}; expected a CSV/TSV list of path,pid,camid[,split]")
        rows, split_given = _csv_rows(path, spec)
        names = {}
        layout, sources = "CSV list (path,pid,camid[,split])", {"all": path}
    if not rows:
        raise DatasetError(f"{spec.kind}:{path}: no images found (extensions .jpg, .jpeg, .png)")
    notes = []
    if len({camid for _, _, camid, _ in rows}) == 1:
        notes.append("a single camera: every image is camera 1 (give a camera folder level, --camera-pattern "
                     "or the CSV's camid to tell cameras apart)")
    splits = _split(rows, spec, split_given, notes, names)
    return ReidDataset(root=path, layout=layout, sources=sources, notes=notes, **splits)


# === folder:DIR ===

def _folder_rows(root: str, spec: DataSpec) -> tuple[list, bool]:
    """``[(path, pid, camid, split or None)]`` of a folder per identity, and whether the split was given."""
    top = _subdirs(root)
    given = bool(top) and set(top) <= set(SPLIT_FOLDERS) and bool(set(top) & {"query", "gallery", "test"})
    directories = [os.path.join(root, split) for split in top] if given else [root]
    identities = sorted({name for directory in directories for name in _subdirs(directory)})
    numbered = all(n.isdigit() and int(n) > 0 for n in identities)
    if numbered:
        _refuse_duplicate_numbers(root, identities)
    pids = ({name: int(name) for name in identities} if numbered
            else {name: index + 1 for index, name in enumerate(identities)})
    spec_names = {pid: name for name, pid in pids.items()}
    camera_names = sorted({camera for directory in directories for name in _subdirs(directory)
                           for camera in _subdirs(os.path.join(directory, name))})
    cameras = _numbers(camera_names) or {name: index + 1 for index, name in enumerate(camera_names)}
    rows = []
    for directory in directories:
        split = os.path.basename(directory) if given else None
        rows += [(p, pid, cam, split) for p, pid, cam, _ in _identity_rows(directory, pids, cameras)]
    if spec.camera_pattern is not None:
        rows = _cameras_from_pattern(rows, root, spec.camera_pattern)
    return rows, given, spec_names


def _refuse_duplicate_numbers(root: str, identities: list[str]) -> None:
    """One line naming two identity folders with the same number (``1/`` and ``01/`` are both person 1)."""
    seen: dict[int, str] = {}
    for name in identities:
        if int(name) in seen:
            raise DatasetError(f"{root}: identity folders {seen[int(name)]}/ and {name}/ are both person id "
                               f"{int(name)}; merge or rename one of them")
        seen[int(name)] = name


def _subdirs(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if not name.startswith(".") and os.path.isdir(os.path.join(directory, name)))


def _images(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory)
                  if is_image_file(name) and os.path.isfile(os.path.join(directory, name)))


def _numbers(names: list[str], positive: bool = True) -> dict[str, int] | None:
    """Each name's trailing number when every name has a distinct one, else None."""
    found = {name: _TRAILING_NUMBER.search(name) for name in names}
    if not all(found.values()):
        return None
    numbers = {name: int(match.group(1)) for name, match in found.items()}
    if len(set(numbers.values())) != len(numbers) or (positive and min(numbers.values(), default=1) < 1):
        return None
    return numbers


def _identity_rows(directory: str, pids: dict, cameras: dict) -> list:
    identities = _subdirs(directory)
    loose = _images(directory)
    if loose:
        raise DatasetError(f"{os.path.join(directory, loose[0])}: an image beside the identity folders; "
                           "folder:DIR expects DIR/<identity>/<image> (or DIR/<identity>/<camera>/<image>)")
    rows = []
    for name in identities:
        person = os.path.join(directory, name)
        images, camera_folders = _images(person), _subdirs(person)
        if images and camera_folders:
            raise DatasetError(f"{person}: holds both images and sub-folders; put every image of an identity "
                               "either directly in its folder or in one folder per camera")
        for camera in camera_folders:
            folder = os.path.join(person, camera)
            if _subdirs(folder):
                raise DatasetError(f"{os.path.join(folder, _subdirs(folder)[0])}: folder:DIR reads two levels, "
                                   "DIR/<identity>/<camera>/<image>; this is a third")
            rows += [(os.path.join(folder, image), pids[name], cameras[camera], None) for image in _images(folder)]
        rows += [(os.path.join(person, image), pids[name], 1, None) for image in images]
    return rows


def _cameras_from_pattern(rows: list, root: str, pattern: str) -> list:
    """Rows with the camera read by ``pattern`` from each path relative to ``root``."""
    compiled = re.compile(pattern)
    values = []
    for path, *_ in rows:
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        match = compiled.search(relative)
        if match is None or match.group("cam") is None:
            raise DatasetError(f"{path}: --camera-pattern {pattern} does not match {relative}; every image "
                               "needs a camera (or leave the option out: one camera)")
        values.append(match.group("cam"))
    distinct = sorted(set(values))
    numbers = ({v: int(v) for v in distinct} if all(v.isdigit() for v in distinct)
               else {v: index + 1 for index, v in enumerate(distinct)})
    return [(path, pid, numbers[value], split) for (path, pid, _, split), value in zip(rows, values)]


# === csv:FILE ===

def _csv_rows(path: str, spec: DataSpec) -> tuple[list, bool]:
    base = os.path.dirname(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot be read as a text list ({error})") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    delimiter = "\t" if path.lower().endswith(".tsv") or "\t" in first else ","
    rows, splits, unknown_camera = [], [], []
    first_row = True
    for number, fields in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        fields = [field.strip() for field in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        where = f"{path} line {number}"
        header, first_row = first_row and len(fields) > 1 and not _is_int(fields[1]), False
        if header:
            continue  # a header row (the first row that is not blank or a # comment): path,pid,camid[,split]
        if len(fields) not in (3, 4):
            raise DatasetError(f"{where}: {len(fields)} fields; expected path,pid,camid[,split] "
                               f"(separated by {'tabs' if delimiter == chr(9) else 'commas'})")
        image, pid, camid = fields[:3]
        if not _is_int(pid) or int(pid) < JUNK_PID:
            raise DatasetError(f"{where}: person id {pid!r} is not an integer >= -1 (-1 junk, 0 distractor)")
        if camid and not _is_int(camid):
            raise DatasetError(f"{where}: camera id {camid!r} is not an integer (or leave it empty)")
        split = fields[3].lower() if len(fields) == 4 and fields[3] else None
        if split is not None and split not in SPLIT_FOLDERS:
            raise DatasetError(f"{where}: split {fields[3]!r} is not one of {', '.join(SPLIT_FOLDERS)}")
        full = os.path.normpath(os.path.join(base, os.path.expanduser(image)))
        if not is_image_file(os.path.basename(full)):
            raise DatasetError(f"{where}: {image} is not an image file name (.jpg, .jpeg, .png)")
        if not os.path.isfile(full):
            raise DatasetError(f"{where}: {image} does not exist (looked for {full}; paths are relative to the "
                               "list file's directory)")
        if not camid:
            unknown_camera.append(len(rows))
        rows.append((full, int(pid), int(camid) if camid else 1, split))
        splits.append(split)
    given = [s is not None for s in splits]
    if any(given) and not all(given):
        missing = given.index(False)
        raise DatasetError(f"{path}: row {rows[missing][0]} has no split but others do; give a split "
                           "(train, query, gallery, test) on every row or on none")
    if spec.camera_pattern is not None and unknown_camera:
        patterned = _cameras_from_pattern([rows[i] for i in unknown_camera], base, spec.camera_pattern)
        for index, row in zip(unknown_camera, patterned):
            rows[index] = row
    return rows, bool(rows) and all(given)


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", text))


# === The split ===

def identity_draw(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by ``(seed, name)`` alone: an identity is a test identity when it is
    below the test fraction, so adding or removing other identities moves no identity across."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_test_identities(identities: dict[int, str], seed: int, test_fraction: float) -> set[int]:
    """The test pids among ``identities`` (pid -> name): each by :func:`identity_draw` against
    ``test_fraction``; with two or more identities and 0 < fraction < 1, at least one on each side
    (the one with the lowest draw is moved to test, or the one with the highest to training)."""
    draws = {pid: identity_draw(seed, name) for pid, name in identities.items()}
    test = {pid for pid, draw in draws.items() if draw < test_fraction}
    if len(draws) >= 2 and 0.0 < test_fraction < 1.0:
        if not test:
            test = {min(draws, key=lambda pid: (draws[pid], pid))}
        elif len(test) == len(draws):
            test.discard(max(draws, key=lambda pid: (draws[pid], pid)))
    return test


def _split(rows: list, spec: DataSpec, split_given: bool, notes: list, names: dict | None = None) -> dict:
    records = {split: [] for split in ("train", "query", "gallery")}
    if split_given:
        test = []
        for path, pid, camid, split in rows:
            if split == "test":
                test.append((path, pid, camid))
            else:
                records[split].append(ImageRecord(path, pid, camid))
        query, gallery = pick_queries(test, spec.seed)
        records["query"] += query
        records["gallery"] += gallery
        return records
    identities = sorted({pid for _, pid, _, _ in rows if pid > 0})
    names = names or {}
    test_ids = split_test_identities({pid: names.get(pid, str(pid)) for pid in identities}, spec.seed,
                               spec.test_fraction)
    notes.append(f"split by identity (seed {spec.seed}, test fraction {spec.test_fraction:g}): "
                 f"{len(identities) - len(test_ids)} training, {len(test_ids)} test identities; one query per "
                 "test identity and camera")
    test = []
    for path, pid, camid, _ in rows:
        if pid in test_ids or pid <= 0:  # junk and distractors: gallery only
            test.append((path, pid, camid))
        else:
            records["train"].append(ImageRecord(path, pid, camid))
    records["query"], records["gallery"] = pick_queries(test, spec.seed)
    return records


def pick_queries(test: list, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(query, gallery)``: one query per identity and camera while every query keeps a match.

    Cameras in increasing order; a camera gives a query only if afterwards
    every query of the identity (this one and those picked before) still has
    a gallery image of the identity from another camera, so each query is a
    valid one (cameras 1, 1, 2: one camera-1 query, not also the only
    camera-2 image, which would leave the camera-1 query no match). When the
    whole test set is one camera, a query only needs a gallery image left
    (single-camera data is evaluated with ``--same-camera-ok``). The image of a camera is drawn with a
    generator seeded by ``(seed, pid)``, so adding other identities changes
    no identity's queries.
    """
    by_pid: dict[int, list] = {}
    for row in sorted(test):
        by_pid.setdefault(row[1], []).append(row)
    single_camera = len({row[2] for row in test}) <= 1
    query, gallery = [], []
    for pid, images in sorted(by_pid.items()):
        chosen = set()
        if pid > 0:
            rng = np.random.default_rng([seed, pid])
            for camid in sorted({cam for _, _, cam in images}):
                candidates = [i for i, row in enumerate(images) if row[2] == camid]
                pick = candidates[int(rng.integers(len(candidates)))]
                if _all_matched(images, chosen | {pick}, single_camera):
                    chosen.add(pick)
        for i, (path, _, camid) in enumerate(images):
            (query if i in chosen else gallery).append(ImageRecord(path, pid, camid))
    return query, gallery


def _all_matched(images: list, chosen: set, single_camera: bool = False) -> bool:
    """Whether each chosen query's camera differs from some camera left in the gallery (with
    ``single_camera`` data, only whether a gallery image is left: those queries are for
    ``--same-camera-ok``)."""
    if single_camera:
        return len(images) > len(chosen)
    gallery_cameras = {row[2] for i, row in enumerate(images) if i not in chosen}
    return all(gallery_cameras - {images[i][2]} for i in chosen)
