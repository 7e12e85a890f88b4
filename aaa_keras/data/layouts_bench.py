"""The benchmarks that are not in Market-1501's layout: MSMT17, Occluded-REID and Partial-REID.

MSMT17 (V1 and V2)
    ``list_train.txt``, ``list_val.txt``, ``list_query.txt``,
    ``list_gallery.txt``: one ``RELATIVE_PATH LABEL`` per line, the path
    relative to ``train/`` (train, val) or ``test/`` (query, gallery) -- V2:
    ``mask_train_v2/``, ``mask_test_v2/``. The camera is the third ``_``
    field of the file name (``0000_000_01_0303morning_0015_0.jpg``: camera 1).
    Training is list_train + list_val (32,621 images, 1,041 identities, the
    training set published results use). MSMT17 numbers its training and
    test identities separately, both from 0; here a training label L is
    person id L + 1 and a test label L is L + 1 + :data:`MSMT17_TEST_OFFSET`,
    so that no label is the distractor id 0 and the two sets never collide.

Occluded-REID (Zhuo et al. 2018) and Partial-REID (Zheng et al. 2015)
    Evaluation only (no training split; the field trains on Market-1501):
    queries are ``occluded_body_images/`` (Occluded-REID) or
    ``partial_body_images/`` (Partial-REID), the gallery
    ``whole_body_images/``; images directly in those folders or in a folder
    per person. The person id is the file name's leading number
    (``001_01.tif``); the images carry no camera, so, as the protocol and
    torchreid's loaders do, every query is camera 1 and every gallery image
    camera 2: each query is matched against all whole-body images.

Occluded-REID ships as TIFF, which TensorFlow's decoder does not read:
``python -m aaa_keras.data.layouts_bench DIR OUT`` writes a PNG copy of any
dataset directory (same layout, same names with ``.png``).
"""

from __future__ import annotations

import os
import re
import sys

from aaa_keras.data.names import ImageRecord, ReidDataset, is_image_file
from aaa_keras.errors import DatasetError

MSMT17_TEST_OFFSET = 100000
MSMT17_DIRS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
TIFF_EXTENSIONS = (".tif", ".tiff")
QUERY_CAMERA, GALLERY_CAMERA = 1, 2
_LEADING_NUMBER = re.compile(r"(\d+)")


def load(layout: str, root: str, allow_tiff: bool = False) -> ReidDataset:
    if layout == "msmt17":
        return load_msmt17(root)
    query_folder = "partial_body_images" if layout == "partial-reid" else "occluded_body_images"
    return load_query_gallery_folders(root, query_folder, allow_tiff)


# === MSMT17 ===

def load_msmt17(root: str) -> ReidDataset:
    from aaa_keras.data.layouts import msmt17_root

    base = msmt17_root(root)
    version = next((v for v, (train, test) in MSMT17_DIRS.items()
                    if os.path.isdir(os.path.join(base, train)) and os.path.isdir(os.path.join(base, test))), None)
    if version is None:
        raise DatasetError(f"{base}: MSMT17's list files are here but not its image folders; expected train/ and "
                           "test/ (MSMT17_V1) or mask_train_v2/ and mask_test_v2/ (MSMT17_V2)")
    train_dir, test_dir = (os.path.join(base, name) for name in MSMT17_DIRS[version])
    lists = {name: os.path.join(base, f"list_{name}.txt") for name in ("train", "val", "query", "gallery")}
    for name in ("train", "query", "gallery"):
        if not os.path.isfile(lists[name]):
            raise DatasetError(f"{lists[name]}: missing; MSMT17 needs list_train.txt, list_query.txt and "
                               "list_gallery.txt (list_val.txt is optional)")
    train = _msmt17_list(lists["train"], train_dir, 1)
    if os.path.isfile(lists["val"]):
        train += _msmt17_list(lists["val"], train_dir, 1)
    query = _msmt17_list(lists["query"], test_dir, 1 + MSMT17_TEST_OFFSET)
    gallery = _msmt17_list(lists["gallery"], test_dir, 1 + MSMT17_TEST_OFFSET)
    return ReidDataset(root=base, train=train, query=query, gallery=gallery, layout=f"MSMT17 ({version})",
                       sources={"train": lists["train"] + (" + list_val.txt" if os.path.isfile(lists["val"]) else ""),
                                "query": lists["query"], "gallery": lists["gallery"]},
                       notes=[f"MSMT17 labels: training L -> person id L + 1, test L -> L + {1 + MSMT17_TEST_OFFSET} "
                              "(the two are numbered separately from 0)"])


def _msmt17_list(list_path: str, image_dir: str, offset: int) -> list[ImageRecord]:
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{list_path}: cannot be read ({error})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{list_path} line {number}"
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{where}: {line.strip()!r} is not 'RELATIVE_PATH LABEL' "
                               "(e.g. 0000/0000_000_01_0303morning_0015_0.jpg 0)")
        relative, label = fields
        parts = os.path.basename(relative).split("_")
        if len(parts) < 3 or not parts[2].isdigit():
            raise DatasetError(f"{where}: file name {os.path.basename(relative)} has no camera as its third '_' "
                               "field (e.g. 0000_000_01_0303morning_0015_0.jpg is camera 1)")
        path = os.path.join(image_dir, relative)
        if not os.path.isfile(path):
            raise DatasetError(f"{where}: {relative} is not in {image_dir}")
        records.append(ImageRecord(path, int(label) + offset, int(parts[2])))
    if not records:
        raise DatasetError(f"{list_path}: lists no images")
    return records


# === Occluded-REID, Partial-REID ===

def load_query_gallery_folders(root: str, query_folder: str, allow_tiff: bool = False) -> ReidDataset:
    layout = "Partial-REID" if query_folder == "partial_body_images" else "Occluded-REID"
    what = "partial" if layout == "Partial-REID" else "occluded"
    query_dir, gallery_dir = os.path.join(root, query_folder), os.path.join(root, "whole_body_images")
    if not os.path.isdir(gallery_dir):
        raise DatasetError(f"{gallery_dir}: missing; {layout} needs {query_folder}/ (queries) and "
                           "whole_body_images/ (gallery)")
    query = _person_images(query_dir, QUERY_CAMERA, allow_tiff)
    gallery = _person_images(gallery_dir, GALLERY_CAMERA, allow_tiff)
    notes = [f"{layout}: evaluation only (no training split; train on Market-1501 and evaluate with --data); "
             f"every query is {what} by definition ({query_folder}/), the gallery whole-body; no camera ids: "
             f"queries are camera {QUERY_CAMERA}, the gallery camera {GALLERY_CAMERA}, so each query is matched "
             "against every whole-body image (the protocol)"]
    return ReidDataset(root=root, train=[], query=query, gallery=gallery, layout=layout,
                       sources={"query": query_dir, "gallery": gallery_dir}, notes=notes)


def _person_images(directory: str, camid: int, allow_tiff: bool) -> list[ImageRecord]:
    if not os.path.isdir(directory):
        raise DatasetError(f"{directory}: missing")
    records, tiff = [], []
    for folder, subdirs, names in os.walk(directory):
        subdirs.sort()
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            is_tiff = name.lower().endswith(TIFF_EXTENSIONS)
            if not (is_image_file(name) or is_tiff):
                continue
            if is_tiff:
                tiff.append(path)
            match = _LEADING_NUMBER.match(name) or _LEADING_NUMBER.fullmatch(os.path.basename(folder))
            if match is None or int(match.group(1)) < 1:
                raise DatasetError(f"{path}: no person id; expected a name starting with it (001_01.jpg) or a "
                                   "folder per person named by it (001/)")
            records.append(ImageRecord(path, int(match.group(1)), camid))
    if tiff and not allow_tiff:
        raise DatasetError(f"{tiff[0]}: {len(tiff)} TIFF images, which TensorFlow's decoder does not read; convert "
                           f"them once: python -m aaa_keras.data.layouts_bench {os.path.dirname(directory)} "
                           f"{os.path.dirname(directory).rstrip(os.sep)}-png, then use that directory")
    if not records:
        raise DatasetError(f"{directory}: no images (.jpg, .jpeg, .png)")
    return records


# === TIFF -> PNG ===

def convert_to_png(source: str, out: str, log=print) -> int:
    """Copy every image under ``source`` to the same relative path under ``out`` as PNG (OpenCV);
    returns the number written. Other files are not copied."""
    import cv2

    from aaa_keras.files import write_bytes_atomically

    if os.path.exists(out) and os.listdir(out):
        raise DatasetError(f"{out}: exists and is not empty; give a new directory")
    count = 0
    for folder, subdirs, names in os.walk(source):
        subdirs.sort()
        for name in sorted(names):
            if not (is_image_file(name) or name.lower().endswith(TIFF_EXTENSIONS)):
                continue
            path = os.path.join(folder, name)
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"{path}: OpenCV cannot read it; replace or delete it")
            ok, encoded = cv2.imencode(".png", image)
            target = os.path.join(out, os.path.relpath(folder, source), os.path.splitext(name)[0] + ".png")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            write_bytes_atomically(target, encoded.tobytes())
            count += 1
    log(f"Wrote {count} PNG images to {out}")
    return count


if __name__ == "__main__":  # python -m aaa_keras.data.layouts_bench SOURCE OUT
    if len(sys.argv) != 3:
        sys.exit("usage: python -m aaa_keras.data.layouts_bench SOURCE_DIR OUT_DIR  (writes PNG copies)")
    try:
        convert_to_png(sys.argv[1], sys.argv[2])
    except DatasetError as error:
        sys.exit(f"Error: {error}")
