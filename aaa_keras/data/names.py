"""Market-1501 / DukeMTMC-reID directory layout and file names.

A dataset root holds three split directories (:data:`SPLITS`). Every image's
file name carries its person id and camera:

- Market-1501: ``PPPP_cCsS_FFFFFF_DD.jpg``, e.g. ``0002_c1s1_000451_03.jpg``
  (person, camera, sequence, frame, detection);
- DukeMTMC-reID: ``PPPP_cC_fFFFFFFF.jpg``, e.g. ``0001_c2_f0046182.jpg``.

Person id ``-1`` marks junk images and ``0000`` distractors: both stay in the
gallery for evaluation and never take part in training.

CUHK03-NP (``PPPP_cC_N.png``, e.g. ``0001_c1_1.png``) uses the same layout;
its names are read only under a directory named like CUHK03 (``cuhk03-np/labeled``),
so that a malformed Market name is not silently taken for one. The other
layouts (MSMT17, Occluded-REID, Partial-REID, a folder per identity, a CSV
list) live in ``layouts.py``, whose :func:`~aaa_keras.data.layouts.load_dataset` reads any of
them (this module never imports it: ``layouts`` builds on this one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np

from aaa_keras.errors import DatasetError

SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_PID = -1
DISTRACTOR_PID = 0

_MARKET_NAME = re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)s\d+_\d+_\d+")
_DUKE_NAME = re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)_f\d+")
_CUHK03_NAME = re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)_\d+")
_ACCEPTED_PATTERNS = (
    "expected Market-1501 'PPPP_cCsS_FFFFFF_DD.jpg' (e.g. 0002_c1s1_000451_03.jpg) "
    "or DukeMTMC-reID 'PPPP_cC_fFFFFFFF.jpg' (e.g. 0001_c2_f0046182.jpg), "
    "person id -1 for junk and 0000 for distractors"
)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a split: its path, person id and camera (1-based, as written)."""

    path: str
    pid: int
    camid: int

    @property
    def is_identity(self) -> bool:
        """True for a real person id, False for junk (-1) and distractors (0)."""
        return self.pid > 0


def is_image_file(name: str) -> bool:
    """An image by extension (case-insensitive); hidden files such as ``._x.jpg`` are not."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _match_name(path: str, cuhk03: bool = False) -> tuple[int, int, str]:
    """``(pid, camid, "market" | "duke" | "cuhk03")`` for a file path, or a DatasetError.

    ``cuhk03``: also accept CUHK03-NP names (``PPPP_cC_N``)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    patterns = (("market", _MARKET_NAME), ("duke", _DUKE_NAME)) + ((("cuhk03", _CUHK03_NAME),) if cuhk03 else ())
    for naming, pattern in patterns:
        match = pattern.fullmatch(stem)
        if match:
            pid, camid = int(match.group("pid")), int(match.group("cam"))
            if pid < JUNK_PID:
                raise DatasetError(
                    f"{path}: person id {pid} is not valid; {_ACCEPTED_PATTERNS}")
            return pid, camid, naming
    accepted = _ACCEPTED_PATTERNS + (", or CUHK03-NP 'PPPP_cC_N.png' (e.g. 0001_c1_1.png)" if cuhk03 else "")
    raise DatasetError(f"{path}: file name does not parse; {accepted}")


def parse_name(path: str) -> tuple[int, int]:
    """``(pid, camid)`` from a Market-1501 or DukeMTMC-reID file name.

    Raises DatasetError naming the file (and showing both accepted patterns)
    when the name does not parse.
    """
    pid, camid, _ = _match_name(path)
    return pid, camid


def name_format(path: str, cuhk03: bool = False) -> str:
    """``"market"``, ``"duke"`` (or, with ``cuhk03``, ``"cuhk03"``): which naming scheme a file name follows."""
    return _match_name(path, cuhk03)[2]


def is_cuhk03_root(root: str) -> bool:
    """Whether CUHK03-NP names are read under ``root``: it is named like CUHK03 (``cuhk03-np``), or
    it is ``labeled/`` or ``detected/`` of a directory named so (``cuhk03-np/labeled``)."""
    parent, name = os.path.split(os.path.normpath(os.path.abspath(root)))

    def cuhk03(part: str) -> bool:
        return "cuhk03" in part.lower().replace("_", "").replace("-", "")

    return cuhk03(name) or (name.lower() in ("labeled", "detected") and cuhk03(os.path.basename(parent)))


def split_dir(root: str, split: str) -> str:
    """The directory of ``split`` (a key of :data:`SPLITS`) under ``root``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return os.path.join(root, SPLITS[split])


def list_split(root: str, split: str, cuhk03: bool | None = None) -> list[ImageRecord]:
    """Every image of one split, sorted by file name; non-image files are ignored.

    ``cuhk03``: accept CUHK03-NP names too (default: when :func:`is_cuhk03_root`)."""
    if cuhk03 is None:
        cuhk03 = is_cuhk03_root(root)
    directory = split_dir(root, split)
    if not os.path.isdir(directory):
        raise DatasetError(
            f"{directory}: the {split} split directory is missing; a dataset root needs "
            f"{', '.join(SPLITS.values())}/ (Market-1501 layout)")
    names = sorted(name for name in os.listdir(directory)
                   if is_image_file(name) and os.path.isfile(os.path.join(directory, name)))
    if not names:
        raise DatasetError(
            f"{directory}: the {split} split has no images; expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}")
    records = []
    for name in names:
        path = os.path.join(directory, name)
        pid, camid, _ = _match_name(path, cuhk03)
        records.append(ImageRecord(path=path, pid=pid, camid=camid))
    return records


def record_ids(records: list[ImageRecord]) -> tuple[np.ndarray, np.ndarray]:
    """``(pids, camids)`` of the records, int64, in order: the labels the ranking protocol takes."""
    return (np.array([r.pid for r in records], np.int64), np.array([r.camid for r in records], np.int64))


def relabel(records: list[ImageRecord]) -> tuple[np.ndarray, dict[int, int]]:
    """Contiguous class labels ``0..C-1`` for the records, in order of sorted pid.

    Only real identities can be classes: records of junk (-1) or distractors
    (0) are a programming error (filter with ``ReidDataset.train_identities``).
    """
    bad = sorted({r.pid for r in records if not r.is_identity})
    if bad:
        raise ValueError(f"relabel: junk/distractor person ids {bad} cannot be classes; "
                         "use ReidDataset.train_identities()")
    pid_to_label = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    labels = np.array([pid_to_label[r.pid] for r in records], dtype=np.int64)
    return labels, pid_to_label


@dataclasses.dataclass
class ReidDataset:
    """The three splits of a dataset (``train`` may be empty: an evaluation-only benchmark).

    ``layout``: its layout's name as ``data check`` prints it; ``sources``:
    where each split comes from (a directory, a list file), for messages;
    ``notes``: what a user should know about how it was read (the camera
    rule of a layout without camera ids, a split made by identity).
    """

    root: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    layout: str = "Market-1501"
    sources: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    def train_identities(self) -> list[ImageRecord]:
        """The training records without junk (-1) and distractors (0)."""
        return [r for r in self.train if r.is_identity]

    def relabel(self, records: list[ImageRecord] | None = None
                ) -> tuple[np.ndarray, dict[int, int]]:
        """Contiguous labels for ``records`` (default: :meth:`train_identities`)."""
        return relabel(self.train_identities() if records is None else records)

    @property
    def num_classes(self) -> int:
        """Number of training identities, i.e. the classifier's output size."""
        return len({r.pid for r in self.train_identities()})


def load_market(root: str) -> ReidDataset:
    """Read a dataset root in the Market-1501 layout (Market, Duke or, under a CUHK03 directory,
    CUHK03-NP file names)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise DatasetError(
            f"{root}: dataset root {what}; expected a directory with "
            f"{', '.join(SPLITS.values())}/ (Market-1501 layout)")
    return ReidDataset(root=root, **{split: list_split(root, split) for split in SPLITS},
                       sources={split: split_dir(root, split) for split in SPLITS})


def dataset_fingerprint(dataset: ReidDataset) -> dict:
    """A small JSON-safe summary identifying a dataset, stored in a run directory.

    Two fingerprints are equal when the datasets have the same root name and
    the same training images and ids (the training file list is hashed), so a
    run directory made for another dataset is detected; moving the dataset
    root to another parent directory keeps the fingerprint.
    """
    identities = dataset.train_identities()
    digest = hashlib.sha1()
    for record in identities:
        digest.update(f"{os.path.basename(record.path)}\n".encode())
    return {
        "name": os.path.basename(os.path.normpath(os.path.abspath(dataset.root))),
        "num_train_ids": dataset.num_classes,
        "num_train_images": len(identities),
        "num_query_images": len(dataset.query),
        "num_gallery_images": len(dataset.gallery),
        "train_files_sha1": digest.hexdigest()[:16],
    }
