"""``python cli.py data check DIR``: count what a dataset holds and find what is wrong.

Hard errors (a DatasetError naming the file or directory): a missing or empty
split, a file name that does not parse, an image that is empty or does not
decode. Warnings (errors with ``strict=True``): query ids with no gallery
image of the same id from another camera (evaluation skips those queries),
junk or distractor images in the query or training split, identities shared
by the training and test splits, file names mixing Market and Duke patterns.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import cv2
import numpy as np

from aaa_keras.data.names import (
    DISTRACTOR_PID, JUNK_PID, SPLITS, ImageRecord, ReidDataset, load_dataset, name_format)
from aaa_keras.errors import DatasetError

_NAMING_TITLES = {"market": "Market-1501", "duke": "DukeMTMC-reID"}
_MAX_LISTED = 5  # ids named in one warning before "..."


@dataclasses.dataclass
class SplitStats:
    """Counts of one split; ``num_ids`` counts real identities (not -1, not 0000)."""

    split: str
    directory: str
    num_images: int
    num_ids: int
    cameras: list[int]
    num_junk: int
    num_distractors: int
    min_size: tuple[int, int] | None = None  # (height, width) of the smallest image, if decoded
    max_size: tuple[int, int] | None = None

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)


@dataclasses.dataclass
class CheckReport:
    root: str
    naming: str  # "Market-1501", "DukeMTMC-reID" or "mixed"
    splits: dict[str, SplitStats]
    warnings: list[str]
    decoded: bool

    @property
    def ok(self) -> bool:
        return not self.warnings


def decode_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, or a DatasetError naming it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DatasetError(f"{path}: cannot read the image file ({error.strerror})") from None
    if data.size == 0:
        raise DatasetError(f"{path}: image file is empty (0 bytes); replace or delete it")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: image does not decode ({data.size} bytes, expected a valid "
                           "JPEG or PNG); replace or delete it")
    return int(image.shape[0]), int(image.shape[1])


def _split_stats(split: str, directory: str, records: list[ImageRecord],
                 decode: bool) -> SplitStats:
    stats = SplitStats(
        split=split,
        directory=directory,
        num_images=len(records),
        num_ids=len({r.pid for r in records if r.is_identity}),
        cameras=sorted({r.camid for r in records}),
        num_junk=sum(r.pid == JUNK_PID for r in records),
        num_distractors=sum(r.pid == DISTRACTOR_PID for r in records),
    )
    if decode:
        sizes = [decode_size(r.path) for r in records]
        stats.min_size = min(sizes, key=lambda s: s[0] * s[1])
        stats.max_size = max(sizes, key=lambda s: s[0] * s[1])
    return stats


def _id_list(pids) -> str:
    pids = sorted(pids)
    listed = ", ".join(f"{p:04d}" for p in pids[:_MAX_LISTED])
    return listed + (", ..." if len(pids) > _MAX_LISTED else "")


def _unmatched_queries(dataset: ReidDataset) -> dict[int, list[int]]:
    """Query pid -> its cameras that have no gallery image of the pid in another camera."""
    gallery_cams = collections.defaultdict(set)
    for record in dataset.gallery:
        gallery_cams[record.pid].add(record.camid)
    unmatched = collections.defaultdict(set)
    for record in dataset.query:
        if record.is_identity and not gallery_cams[record.pid] - {record.camid}:
            unmatched[record.pid].add(record.camid)
    return {pid: sorted(cams) for pid, cams in unmatched.items()}


def _query_warnings(dataset: ReidDataset, query_dir: str) -> list[str]:
    warnings = []
    unmatched = _unmatched_queries(dataset)
    if unmatched:
        num_query_ids = len({r.pid for r in dataset.query if r.is_identity})
        examples = ", ".join(f"{pid:04d} (camera {'/'.join(map(str, cams))})"
                             for pid, cams in sorted(unmatched.items())[:_MAX_LISTED])
        more = ", ..." if len(unmatched) > _MAX_LISTED else ""
        warnings.append(
            f"{query_dir}: {len(unmatched)} of {num_query_ids} query ids have no gallery image "
            f"of the same id from another camera: {examples}{more}; evaluation skips them")
    not_identities = [r for r in dataset.query if not r.is_identity]
    if not_identities:
        warnings.append(
            f"{query_dir}: {len(not_identities)} query images are junk (-1) or distractors "
            "(0000), e.g. " + os.path.basename(not_identities[0].path)
            + "; evaluation skips them")
    return warnings


def _train_warnings(dataset: ReidDataset, train_dir: str) -> list[str]:
    warnings = []
    not_identities = [r for r in dataset.train if not r.is_identity]
    if not_identities:
        warnings.append(
            f"{train_dir}: {len(not_identities)} training images are junk (-1) or distractors "
            "(0000), e.g. " + os.path.basename(not_identities[0].path)
            + "; training ignores them")
    train_ids = {r.pid for r in dataset.train_identities()}
    test_ids = {r.pid for r in dataset.query + dataset.gallery if r.is_identity}
    shared = train_ids & test_ids
    if shared:
        warnings.append(
            f"{train_dir}: {len(shared)} training ids also appear in query/gallery "
            f"({_id_list(shared)}); test identities should be unseen in training")
    return warnings


def _naming(dataset: ReidDataset) -> str:
    formats = {name_format(r.path) for r in dataset.train + dataset.query + dataset.gallery}
    return _NAMING_TITLES[formats.pop()] if len(formats) == 1 else "mixed"


def check_dataset(root: str, strict: bool = False, decode: bool = True) -> CheckReport:
    """Count and validate a dataset root in the Market-1501 layout.

    Raises DatasetError for a missing root or split, an empty split, a file
    name that does not parse, or (with ``decode``) an image that does not
    decode. With ``strict`` every warning is an error too.
    """
    dataset = load_dataset(root)
    directories = {split: os.path.join(dataset.root, name) for split, name in SPLITS.items()}
    splits = {split: _split_stats(split, directories[split], getattr(dataset, split), decode)
              for split in SPLITS}
    naming = _naming(dataset)
    warnings = _query_warnings(dataset, directories["query"])
    warnings += _train_warnings(dataset, directories["train"])
    if naming == "mixed":
        warnings.append(f"{dataset.root}: file names mix Market-1501 and DukeMTMC-reID patterns")
    if strict and warnings:
        raise DatasetError(f"strict check failed: {'; '.join(warnings)}")
    return CheckReport(root=dataset.root, naming=naming, splits=splits, warnings=warnings,
                       decoded=decode)


def _size_text(stats: SplitStats) -> str:
    if stats.min_size is None:
        return "-"
    low, high = (f"{h}x{w}" for h, w in (stats.min_size, stats.max_size))
    return low if low == high else f"{low}..{high}"


def format_report(report: CheckReport) -> str:
    """A small table of the counts, then the warnings, for printing."""
    header = ("split", "directory", "images", "ids", "cameras", "junk", "distractors", "size")
    rows = [header] + [
        (s.split, os.path.basename(s.directory) + "/", str(s.num_images), str(s.num_ids),
         str(s.num_cameras), str(s.num_junk), str(s.num_distractors), _size_text(s))
        for s in report.splits.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left_aligned = {0, 1}

    def line(row) -> str:
        cells = [cell.ljust(w) if i in left_aligned else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    lines = [f"Dataset {report.root} ({report.naming} file names)", line(header)]
    lines += [line(row) for row in rows[1:]]
    if report.warnings:
        lines.append(f"{len(report.warnings)} warning(s):")
        lines += [f"  - {warning}" for warning in report.warnings]
    else:
        checked = "names and images" if report.decoded else "names (images not decoded)"
        lines.append(f"OK: {checked} checked, no problems found")
    return "\n".join(lines)
