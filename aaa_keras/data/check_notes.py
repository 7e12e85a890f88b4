"""The lines ``data check`` adds under its table: the camera rule and the share of occluded images."""

from __future__ import annotations

import collections
import json
import os

from aaa_keras.data.names import SPLITS, ReidDataset


def camera_rule(dataset: ReidDataset) -> str:
    """One line: the camera rule and how many queries it leaves."""
    gallery = collections.defaultdict(set)
    for record in dataset.gallery:
        gallery[record.pid].add(record.camid)
    valid = sum(1 for r in dataset.query if r.is_identity and gallery[r.pid] - {r.camid})
    return (f"Camera rule: a query is matched only against gallery images from other cameras "
            f"(same identity and camera are left out): {valid} of {len(dataset.query)} queries have a match")


OCCLUSION_FILE = "occlusion.json"  # written by builtin:occluded (data/synth.py)


def occlusion_shares(dataset: ReidDataset) -> tuple[str | None, str | None]:
    """``(line, warning)``: the share of occluded images per split from the root's ``occlusion.json``
    (``{"occluded": {"query": [names], "gallery": [...], "train": [...]}}``, names relative to their
    split folder), or, for Occluded-REID / Partial-REID, that every query is occluded by definition."""
    if dataset.layout in ("Occluded-REID", "Partial-REID"):
        what = "partial" if dataset.layout == "Partial-REID" else "occluded"
        return (f"Occlusion: every query is {what} by definition ({dataset.layout}); the gallery is whole-body", None)
    path = os.path.join(dataset.root, OCCLUSION_FILE)
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, encoding="utf-8") as f:
            lists = json.load(f)["occluded"]
        occluded = {split: set(lists.get(split, [])) for split in SPLITS}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return None, f"{path}: not read ({type(error).__name__}: {error}); expected {{\"occluded\": {{\"query\": " \
                     "[file names], \"gallery\": [...], \"train\": [...]}}}}"
    parts = []
    for split in ("query", "gallery", "train"):
        records = getattr(dataset, split)
        directory = dataset.sources.get(split, "")
        names = {os.path.relpath(r.path, directory) if directory else os.path.basename(r.path) for r in records}
        hits = len(names & occluded[split])
        share = 100.0 * hits / len(records) if records else 0.0
        parts.append(f"{split} {share:.1f} % ({hits} of {len(records)})")
    return f"Occluded images ({OCCLUSION_FILE}): " + ", ".join(parts), None
