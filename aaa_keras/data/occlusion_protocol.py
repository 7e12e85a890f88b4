"""The occluded protocol of ``builtin:occluded``: which synthetic images are occluded, by how
much, and the ``occlusion.json`` that records it.

Modelled on Occluded-DukeMTMC (Zhuo et al. 2018 / Miao et al. 2019): **every query** is
occluded (here over 20-50 % of the crop, measured on the occluder's mask), about 10 % of
the gallery is occluded, and the training split has occasional occlusion as real footage
does (7 %). The generator is ``data/occluders.py``; ``data/synth.py`` renders each image,
asks :func:`occlude_shot` whether and how to occlude it, and also writes every query's
un-occluded twin to ``query_clean/`` (same file name), so clean and occluded results can
be compared on the same identities and the same queries.

Each decision draws from its own Generator seeded with ``(seed, purpose, split, pid + 1,
camera, index)``: the same dataset seed gives the same occluders whatever the order of
writing.
"""

from __future__ import annotations

import json
import os

from aaa_keras.data import occluders
from aaa_keras.data.render import _rng

PROTOCOL = "occluded-duke-like-v1"
OCCLUSION_FILE = "occlusion.json"
CLEAN_QUERY_DIR = "query_clean"  # the queries without their occluder, same file names
PROBABILITY = {"query": 1.0, "gallery": 0.10, "train": 0.07}  # share of each split occluded
FRACTION_RANGE = occluders.FRACTION_RANGE
_OCCLUSION = 11  # a purpose of its own (data/render.py's are 1..10)
_SPLIT_CODE = {"train": 0, "query": 1, "gallery": 2}


def shot_decision(seed: int, shot):
    """``(requested fraction or None, rng)`` for one shot of ``data/synth.py``'s plan: None
    means the image stays clean; ``rng`` continues the shot's stream for the occluder."""
    rng = _rng(seed, _OCCLUSION, _SPLIT_CODE[shot.split], shot.pid + 1, shot.cam, shot.index)
    if rng.random() >= PROBABILITY[shot.split]:
        return None, rng
    return float(rng.uniform(*FRACTION_RANGE)), rng


def occlude_shot(image, seed: int, shot) -> occluders.Occlusion | None:
    """The occluded image of ``shot`` (an :class:`occluders.Occlusion`), or None if it stays clean."""
    fraction, rng = shot_decision(seed, shot)
    if fraction is None:
        return None
    return occluders.occlusion(image, rng, fraction)


def generator_settings(seed: int) -> dict:
    return {"module": "aaa_keras.data.occluders", "protocol": PROTOCOL, "seed": seed,
            "probability": dict(PROBABILITY), "fraction_range": list(FRACTION_RANGE),
            "kinds": list(occluders.OCCLUDER_KINDS), "kind_weights": list(occluders.KIND_WEIGHTS),
            "textures": list(occluders.TEXTURES), "tolerance": occluders.TOLERANCE,
            "clean_queries": CLEAN_QUERY_DIR}


class OcclusionLog:
    """What :func:`occlude_shot` did to each written file; :meth:`write` makes ``occlusion.json``:
    ``{"occluded": {split: [file names]}, "fraction": {split: {file: measured}}, "kind": {split:
    {file: kind}}, "counts": {split: {"occluded", "total"}}, "generator": {...settings}}`` (names
    relative to the split folder)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.occluded = {split: [] for split in _SPLIT_CODE}
        self.fraction = {split: {} for split in _SPLIT_CODE}
        self.kind = {split: {} for split in _SPLIT_CODE}
        self.total = {split: 0 for split in _SPLIT_CODE}

    def add(self, split: str, file_name: str, result: occluders.Occlusion | None) -> None:
        self.total[split] += 1
        if result is not None:
            self.occluded[split].append(file_name)
            self.fraction[split][file_name] = round(result.fraction, 5)
            self.kind[split][file_name] = f"{result.kind}/{result.side}/{result.texture}"

    def content(self) -> dict:
        return {"occluded": {s: sorted(names) for s, names in self.occluded.items()},
                "fraction": {s: dict(sorted(f.items())) for s, f in self.fraction.items()},
                "kind": {s: dict(sorted(k.items())) for s, k in self.kind.items()},
                "counts": {s: {"occluded": len(self.occluded[s]), "total": self.total[s]} for s in _SPLIT_CODE},
                "generator": generator_settings(self.seed)}

    def write(self, directory: str) -> str:
        path = os.path.join(directory, OCCLUSION_FILE)
        with open(path, "w") as f:
            json.dump(self.content(), f, indent=1, sort_keys=True)
            f.write("\n")
        return path


def read_occlusion(root: str) -> dict | None:
    """A dataset root's ``occlusion.json``, or None when it has none."""
    path = os.path.join(root, OCCLUSION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def clean_query_dir(root: str) -> str | None:
    """``root/query_clean`` when the dataset ships the queries' clean twins, else None."""
    path = os.path.join(root, CLEAN_QUERY_DIR)
    return path if os.path.isdir(path) else None
