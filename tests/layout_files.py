"""Small datasets written in each layout ``aaa_keras/data/layouts*.py`` reads, with tiny images (OpenCV).

Each writer returns what ``--data`` takes. Images are 16 x 8 solid colours
that differ per identity, so a file decodes and two identities differ.
"""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np


def write_image(path, pid: int = 1, index: int = 0, size=(16, 8)) -> str:
    """A tiny image at ``path`` (its extension picks the format: .jpg, .png, .tif)."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    image = np.zeros((*size, 3), np.uint8)
    image[:] = ((pid * 37) % 256, (pid * 91 + index * 7) % 256, (index * 53) % 256)
    assert cv2.imwrite(str(path), image), path
    return str(path)


def folder_from_market(records, out, cameras: bool = True) -> str:
    """``out/<pid>/c<cam>/<name>`` (``cameras``) or ``out/<pid>/<name>`` from Market-layout records; a
    folder-per-identity copy of the built-in data. Junk and distractors are left out."""
    for record in records:
        if record.pid <= 0:
            continue
        directory = os.path.join(str(out), f"{record.pid:04d}", *([f"c{record.camid}"] if cameras else []))
        os.makedirs(directory, exist_ok=True)
        shutil.copy(record.path, directory)
    return str(out)


def folder_dataset(out, ids=6, cams=2, per_camera=2, camera_level=True, names=None) -> str:
    """A folder per identity (``names`` or 0001..), each with ``cams`` x ``per_camera`` images."""
    for i in range(ids):
        name = names[i] if names else f"{i + 1:04d}"
        for cam in range(1, cams + 1):
            for k in range(per_camera):
                sub = [f"cam{cam}"] if camera_level else []
                write_image(os.path.join(str(out), name, *sub, f"{name}_c{cam}_{k:03d}.jpg"), i + 1, cam * 10 + k)
    return str(out)


def market_dataset(out, names_by_split: dict, ext=".jpg") -> str:
    """Market-1501's directories with the given file names per split (``train``, ``query``, ``gallery``)."""
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split, names in names_by_split.items():
        for index, name in enumerate(names):
            pid = int(name.split("_")[0])
            write_image(os.path.join(str(out), folders[split], name), max(pid, 0), index)
    return str(out)


def duke_names(ids, cams=2, start=1):
    """Duke-style names: per id, one image per camera."""
    return [f"{pid:04d}_c{cam}_f{pid * 100 + cam:07d}.jpg" for pid in ids for cam in range(1, cams + 1)]


def cuhk03_np(root) -> str:
    """``root/labeled`` and ``root/detected``, each Market's directories with ``PPPP_cC_N.png`` names."""
    for subset in ("labeled", "detected"):
        market_dataset(os.path.join(str(root), subset), {
            "train": [f"{pid:04d}_c{cam}_{k}.png" for pid in (1, 2, 3) for cam in (1, 2) for k in (1, 2)],
            "query": [f"{pid:04d}_c{cam}_1.png" for pid in (4, 5) for cam in (1, 2)],
            "gallery": [f"{pid:04d}_c{cam}_2.png" for pid in (4, 5, 6) for cam in (1, 2)],
        })
    return str(root)


def msmt17(root, version="V1", bad_line: str | None = None) -> str:
    """MSMT17's list files and image folders (``MSMT17_V1`` names: ``PPPP_SSS_CC_...jpg``)."""
    train_dir, test_dir = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    lists = {"train": [], "val": [], "query": [], "gallery": []}

    def add(which, folder, label, cam, k):
        relative = f"{label:04d}/{label:04d}_{k:03d}_{cam:02d}_0303morning_{k:04d}_0.jpg"
        write_image(os.path.join(str(root), folder, relative), label + (50 if folder == test_dir else 0), k)
        lists[which].append(f"{relative} {label}")

    for label in (0, 1, 2):
        for cam in (1, 3):
            add("train", train_dir, label, cam, cam)
    add("val", train_dir, 2, 5, 9)
    for label in (0, 1):  # test ids numbered from 0 again
        add("query", test_dir, label, 2, 1)
        for cam in (2, 7):
            add("gallery", test_dir, label, cam, cam + 10)
    if bad_line is not None:
        lists["gallery"].append(bad_line)
    for which, lines in lists.items():
        with open(os.path.join(str(root), f"list_{which}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return str(root)


def occluded_reid(root, ids=(1, 2, 3), per_person=2, ext=".png") -> str:
    """Occluded-REID: ``occluded_body_images/<pid>/<pid>_<nn>`` and ``whole_body_images/<pid>/...``."""
    for folder in ("occluded_body_images", "whole_body_images"):
        for pid in ids:
            for k in range(1, per_person + 1):
                write_image(os.path.join(str(root), folder, f"{pid:03d}", f"{pid:03d}_{k:02d}{ext}"), pid, k)
    return str(root)


def partial_reid(root, ids=(1, 2, 3), per_person=2) -> str:
    """Partial-REID: flat ``partial_body_images/<pid>_<nnn>.jpg`` and ``whole_body_images/...``."""
    for folder in ("partial_body_images", "whole_body_images"):
        for pid in ids:
            for k in range(1, per_person + 1):
                write_image(os.path.join(str(root), folder, f"{pid:03d}_{k:03d}.jpg"), pid, k)
    return str(root)
