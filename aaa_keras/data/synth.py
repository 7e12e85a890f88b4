"""The built-in synthetic person re-ID dataset, written in the Market-1501 layout.

Every command of the project runs offline on it, and the same loader reads it
and real Market-1501. Persons are drawn with numpy/OpenCV primitives:

- an **identity** is its clothes and body: upper/lower colours (no two of the
  first 96 identities share both), a pattern on the upper body (plain,
  stripes, checks, a chest logo), sleeves, trousers/shorts/skirt, a bag (none,
  backpack, handbag) with its colour, a hat, hair/skin/shoe colours, height
  and build;
- a **camera** is a nuisance: its own background (wall, floor, windows,
  trees, tiles), lighting gain and colour cast, illumination gradient, blur,
  sensor noise, resolution, distance and how often it sees persons from the
  back;
- every **image** adds a small pose change (shift, scale, leg and arm
  position, front/back view, body turn) and sometimes an occluder (a pole or
  a box in front of the person).

Query and gallery hold the test identities; the gallery also holds
distractors (pid ``0000``: background crops and random passers-by) and junk
(pid ``-1``: heavily cropped and blurred boxes). Every test identity appears
in at least two cameras, and its query cameras leave at least one camera to
the gallery, so every query has a true match in another camera.

Deterministic: each image draws from its own numpy Generator seeded with
``(seed, purpose, pid, camera, index)`` and is written as JPEG at a fixed
quality, so the same seed gives byte-identical files whatever the order.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import secrets
import shutil
import time
from typing import Callable

import cv2
import numpy as np

from aaa_keras.data import occlusion_protocol
from aaa_keras.data.names import DISTRACTOR_PID, JUNK_PID, SPLITS
from aaa_keras.data.render import (  # noqa: F401  (the renderer, split out of this module)
    _DISTRACTOR, _GALLERY_ONLY, _ID_CAMERAS, _IMAGE, _JUNK, _JUNK_SOURCE, _SUPERSAMPLE, _TRAIN_TEST, _Camera,
    _Look, _identity_looks, _make_camera, _render_distractor, _render_junk, _render_person, _rng)
from aaa_keras.errors import DatasetError, UserError

SYNTH_VERSION = "v1"
DEFAULT_NUM_IDS = 40
DEFAULT_NUM_CAMS = 4
DEFAULT_SEED = 0
DEFAULT_IMAGE_SIZE = (128, 64)
DEFAULT_IMAGES_PER_ID_PER_CAM = 4
ABLATE_NUM_TEST_IDS = 250
ABLATE_NUM_IDS = ABLATE_NUM_TEST_IDS + 60
ABLATE_QUERIES_PER_CAMERA = 3
JPEG_QUALITY = 92
INFO_FILE = "synthetic.json"
MAX_PID = 9999  # person ids have four digits


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Shot:
    """One file to write: where it goes and what it shows."""

    split: str  # key of SPLITS
    pid: int  # -1 junk, 0 distractor, else identity
    cam: int
    index: int  # per (kind, pid, cam): decides the seed and the frame number
    source_pid: int = 0  # junk only: the identity it was cropped from

    @property
    def file_name(self) -> str:
        pid_text = "-1" if self.pid == JUNK_PID else f"{self.pid:04d}"
        return f"{pid_text}_c{self.cam}s1_{1 + 25 * self.index:06d}_01.jpg"


def _identity_cameras(seed: int, pid: int, num_cams: int) -> list[int]:
    """The cameras an identity walks past: at least two of them."""
    rng = _rng(seed, _ID_CAMERAS, pid)
    count = int(rng.integers(2, num_cams + 1))
    return sorted(int(c) for c in rng.choice(np.arange(1, num_cams + 1), count, replace=False))


def _split_pids(seed: int, num_ids: int, num_test_ids: int) -> tuple[list[int], list[int]]:
    """Pids ``1..num_ids``: ``num_test_ids`` of them for testing, the rest for training."""
    order = _rng(seed, _TRAIN_TEST, num_ids).permutation(np.arange(1, num_ids + 1))
    num_train = num_ids - num_test_ids
    return sorted(int(p) for p in order[:num_train]), sorted(int(p) for p in order[num_train:])


def _plan(num_ids: int, num_cams: int, seed: int, images_per_id_per_cam: int,
          num_distractors: int, num_junk: int, num_test_ids: int,
          queries_per_camera: int) -> list[_Shot]:
    """Every file of the dataset. A test identity's camera gives ``queries_per_camera``
    query images (frames ``0..q-1``) and ``images_per_id_per_cam - 1`` gallery images
    after them, except its gallery-only camera, which gives ``images_per_id_per_cam``
    gallery images; with one query per camera this is the plan of every earlier version."""
    train_pids, test_pids = _split_pids(seed, num_ids, num_test_ids)
    shots = []
    for pid in train_pids:
        for cam in _identity_cameras(seed, pid, num_cams):
            shots += [_Shot("train", pid, cam, i) for i in range(images_per_id_per_cam)]
    for pid in test_pids:
        cams = _identity_cameras(seed, pid, num_cams)
        gallery_only = cams[int(_rng(seed, _GALLERY_ONLY, pid).integers(len(cams)))]
        for cam in cams:
            if cam == gallery_only:
                shots += [_Shot("gallery", pid, cam, i) for i in range(images_per_id_per_cam)]
                continue
            shots += [_Shot("query", pid, cam, i) for i in range(queries_per_camera)]
            shots += [_Shot("gallery", pid, cam, i) for i in
                      range(queries_per_camera, queries_per_camera + images_per_id_per_cam - 1)]
    for i in range(num_distractors):
        shots.append(_Shot("gallery", DISTRACTOR_PID, 1 + i % num_cams, i // num_cams))
    for i in range(num_junk):
        source = test_pids[int(_rng(seed, _JUNK_SOURCE, i).integers(len(test_pids)))]
        shots.append(_Shot("gallery", JUNK_PID, 1 + i % num_cams, i, source_pid=source))
    return shots


def _render_shot(shot: _Shot, seed: int, looks: dict[int, _Look], cameras: dict[int, _Camera],
                 image_size: tuple[int, int]) -> np.ndarray:
    camera = cameras[shot.cam]
    if shot.pid == DISTRACTOR_PID:
        return _render_distractor(camera, _rng(seed, _DISTRACTOR, shot.cam, shot.index), image_size)
    if shot.pid == JUNK_PID:
        rng = _rng(seed, _JUNK, shot.source_pid, shot.cam, shot.index)
        return _render_junk(looks[shot.source_pid], camera, rng, image_size)
    rng = _rng(seed, _IMAGE, shot.pid, shot.cam, shot.index)
    return _render_person(looks[shot.pid], camera, rng, image_size)


def _encode_jpeg(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a synthetic image")
    return buffer.tobytes()


# --------------------------------------------------------------------------- writing


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_arguments(num_ids, num_cams, seed, image_size, images_per_id_per_cam,
                     num_distractors, num_junk, num_test_ids, queries_per_camera) -> None:
    if not _is_int(num_ids) or not 2 <= num_ids <= MAX_PID:
        raise UserError(f"--ids: the number of identities must be an integer in 2..{MAX_PID} "
                        f"(training and test together), got {num_ids!r}")
    if num_test_ids is not None and (not _is_int(num_test_ids) or not 1 <= num_test_ids < num_ids):
        raise UserError(f"--test-ids: expected an integer in 1..{num_ids - 1} (the rest of --ids "
                        f"{num_ids} train), got {num_test_ids!r}")
    if not _is_int(queries_per_camera) or queries_per_camera < 1:
        raise UserError(f"--queries-per-camera: expected a positive integer, got {queries_per_camera!r}")
    if not _is_int(num_cams) or not 2 <= num_cams <= 9:
        raise UserError(f"--cams: the number of cameras must be an integer in 2..9 (every test "
                        f"identity needs two cameras), got {num_cams!r}")
    if not _is_int(seed) or seed < 0:
        raise UserError(f"--seed: expected a non-negative integer, got {seed!r}")
    if len(image_size) != 2 or image_size[0] < 32 or image_size[1] < 16:
        raise UserError(f"image_size: expected (height, width) of at least (32, 16), "
                        f"got {image_size!r}")
    if not _is_int(images_per_id_per_cam) or images_per_id_per_cam < 1:
        raise UserError(f"images_per_id_per_cam: expected a positive integer, "
                        f"got {images_per_id_per_cam!r}")
    for name, value in (("num_distractors", num_distractors), ("num_junk", num_junk)):
        if value is not None and (not _is_int(value) or value < 0):
            raise UserError(f"{name}: expected a non-negative integer or None, got {value!r}")


def plan_dataset(num_ids: int = DEFAULT_NUM_IDS, num_cams: int = DEFAULT_NUM_CAMS, seed: int = DEFAULT_SEED,
                 images_per_id_per_cam: int = DEFAULT_IMAGES_PER_ID_PER_CAM, num_distractors: int | None = None,
                 num_junk: int | None = None, num_test_ids: int | None = None,
                 queries_per_camera: int = 1) -> tuple[dict, list[_Shot]]:
    """``(settings with the defaults filled in, every shot)`` of :func:`synthesize_market` for these
    arguments (its own defaults), without rendering anything."""
    num_ids, num_cams, seed = int(num_ids), int(num_cams), int(seed)
    images_per_id_per_cam, queries_per_camera = int(images_per_id_per_cam), int(queries_per_camera)
    num_test = num_ids - num_ids // 2 if num_test_ids is None else int(num_test_ids)
    num_distractors = num_test if num_distractors is None else int(num_distractors)
    num_junk = max(1, num_test // 2) if num_junk is None else int(num_junk)
    resolved = dict(num_ids=num_ids, num_cams=num_cams, seed=seed, images_per_id_per_cam=images_per_id_per_cam,
                    num_distractors=num_distractors, num_junk=num_junk, num_test_ids=num_test,
                    queries_per_camera=queries_per_camera)
    return resolved, _plan(num_ids, num_cams, seed, images_per_id_per_cam, num_distractors, num_junk,
                           num_test, queries_per_camera)


def _write_files(directory: str, shots: list[_Shot], seed: int, image_size: tuple[int, int],
                 num_ids: int, num_cams: int, occluded: bool = False) -> None:
    """Render and write every shot. ``occluded``: the occluded protocol
    (``data/occlusion_protocol.py``): the renderer's own light occluders are off, the
    protocol's are drawn, the queries' clean twins go to ``query_clean/`` and what was
    occluded to ``occlusion.json``."""
    canvas_size = (image_size[0] * _SUPERSAMPLE, image_size[1] * _SUPERSAMPLE)
    cameras = {cam: _make_camera(seed, cam, canvas_size) for cam in range(1, num_cams + 1)}
    if occluded:  # the same random stream (the draw is still made), no pole or box of the renderer's
        cameras = {cam: dataclasses.replace(c, occluder_probability=0.0) for cam, c in cameras.items()}
    looks = _identity_looks(seed, list(range(1, num_ids + 1)))
    for split_dir in SPLITS.values():
        os.makedirs(os.path.join(directory, split_dir))
    log = occlusion_protocol.OcclusionLog(seed) if occluded else None
    if occluded:
        os.makedirs(os.path.join(directory, occlusion_protocol.CLEAN_QUERY_DIR))
    for shot in shots:
        image = _render_shot(shot, seed, looks, cameras, image_size)
        if occluded:
            result = occlusion_protocol.occlude_shot(image, seed, shot)
            log.add(shot.split, shot.file_name, result)
            if shot.split == "query":
                with open(os.path.join(directory, occlusion_protocol.CLEAN_QUERY_DIR, shot.file_name), "wb") as f:
                    f.write(_encode_jpeg(image))
            if result is not None:
                image = result.image
        with open(os.path.join(directory, SPLITS[shot.split], shot.file_name), "wb") as f:
            f.write(_encode_jpeg(image))
    if occluded:
        log.write(directory)


def synthesize_market(out_dir: str, num_ids: int = DEFAULT_NUM_IDS,
                      num_cams: int = DEFAULT_NUM_CAMS, seed: int = DEFAULT_SEED,
                      image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                      images_per_id_per_cam: int = DEFAULT_IMAGES_PER_ID_PER_CAM,
                      num_distractors: int | None = None, num_junk: int | None = None,
                      num_test_ids: int | None = None, queries_per_camera: int = 1,
                      occluded: bool = False) -> str:
    """Write a synthetic dataset in the Market-1501 layout at ``out_dir``; return its path.

    ``occluded``: the occluded protocol of ``builtin:occluded`` (every query occluded over
    20-50 %, about 10 % of the gallery and 7 % of the training images; the queries' clean
    twins in ``query_clean/``; ``occlusion.json``; ``data/occlusion_protocol.py``).

    ``num_test_ids`` of the ``num_ids`` identities are test identities (default:
    half, rounded up); each gives ``queries_per_camera`` query images in every
    camera but its gallery-only one. ``num_distractors`` (pid 0000) defaults to
    one per test identity and ``num_junk`` (pid -1) to one per two test
    identities; both go to the gallery only. The files are written into a temporary sibling directory
    that is renamed to ``out_dir`` at the end, so an interrupted run leaves
    nothing at ``out_dir``. An existing non-empty ``out_dir`` is never touched.
    """
    image_size = tuple(int(v) for v in image_size)
    _check_arguments(num_ids, num_cams, seed, image_size, images_per_id_per_cam,
                     num_distractors, num_junk, num_test_ids, queries_per_camera)
    out_dir = os.path.abspath(os.fspath(out_dir))
    _refuse_non_empty(out_dir)
    resolved, shots = plan_dataset(num_ids, num_cams, seed, images_per_id_per_cam, num_distractors, num_junk,
                                   num_test_ids, queries_per_camera)
    num_ids, num_cams, seed = resolved["num_ids"], resolved["num_cams"], resolved["seed"]
    images_per_id_per_cam, queries_per_camera = resolved["images_per_id_per_cam"], resolved["queries_per_camera"]
    num_test, num_distractors, num_junk = resolved["num_test_ids"], resolved["num_distractors"], resolved["num_junk"]
    info = dict(generator=f"aaa_keras synthetic-market-{SYNTH_VERSION}", num_ids=num_ids,
                num_cams=num_cams, seed=seed, image_size=list(image_size),
                images_per_id_per_cam=images_per_id_per_cam, num_distractors=num_distractors,
                num_junk=num_junk, num_images=len(shots))
    if num_test_ids is not None or queries_per_camera != 1:  # earlier versions' files unchanged
        info.update(num_test_ids=num_test, queries_per_camera=queries_per_camera)
    if occluded:
        info.update(occlusion=occlusion_protocol.PROTOCOL)

    def write(directory: str) -> None:
        _write_files(directory, shots, seed, image_size, num_ids, num_cams, bool(occluded))
        with open(os.path.join(directory, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.write("\n")

    _write_atomically(out_dir, write)
    return out_dir


def _refuse_non_empty(out_dir: str) -> None:
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise DatasetError(f"{out_dir}: output directory already exists and is not empty; "
                           "choose another --out or delete it first")


def _write_atomically(out_dir: str, write: Callable[[str], None]) -> None:
    """Run ``write`` on a temporary sibling directory, then rename it to ``out_dir``."""
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, f".{name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    os.makedirs(partial)
    try:
        write(partial)
        _refuse_non_empty(out_dir)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def cache_dir() -> str:
    """``$AAA_KERAS_CACHE``, or ``~/.cache/aaa_keras`` when it is unset."""
    return os.environ.get("AAA_KERAS_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "aaa_keras")


# The built-in datasets by name (``--data builtin:NAME``); ``demo`` is the default of
# every command. ``ablate`` is sized to decide claims: 250 test identities and about
# 1,500 queries, so one query is 0.07 points of Rank-1, with a training split that
# a 2-core machine trains the whole ablation grid on in under 3 hours.
BUILTIN_SIZES: dict[str, dict] = {
    "demo": dict(num_ids=DEFAULT_NUM_IDS, num_cams=DEFAULT_NUM_CAMS),
    "ablate": dict(num_ids=ABLATE_NUM_IDS, num_cams=DEFAULT_NUM_CAMS, num_test_ids=ABLATE_NUM_TEST_IDS,
                   queries_per_camera=ABLATE_QUERIES_PER_CAMERA),
    # Occluded-DukeMTMC's protocol at builtin:ablate's size (data/occlusion_protocol.py)
    "occluded": dict(num_ids=ABLATE_NUM_IDS, num_cams=DEFAULT_NUM_CAMS, num_test_ids=ABLATE_NUM_TEST_IDS,
                     queries_per_camera=ABLATE_QUERIES_PER_CAMERA, occluded=True),
}
BUILTIN_PREFIX = "builtin:"


def default_synthetic_dir(num_ids: int = DEFAULT_NUM_IDS, num_cams: int = DEFAULT_NUM_CAMS,
                          seed: int = DEFAULT_SEED, num_test_ids: int | None = None,
                          queries_per_camera: int = 1, occluded: bool = False) -> str:
    """Where :func:`ensure_synthetic` keeps the built-in dataset for these settings."""
    ids = f"ids{num_ids}" if num_test_ids is None else f"ids{num_ids - num_test_ids}+{num_test_ids}"
    queries = "" if queries_per_camera == 1 else f"-q{queries_per_camera}"
    occlusion = f"-{occlusion_protocol.PROTOCOL}" if occluded else ""
    return os.path.join(cache_dir(), f"synthetic-market-{SYNTH_VERSION}-{ids}-cams{num_cams}{queries}"
                                     f"{occlusion}-seed{seed}")


def builtin_settings(data: str) -> dict | None:
    """The synthesis settings ``data`` names (``""`` or ``builtin:NAME``), or None for a path."""
    if data == "":
        return BUILTIN_SIZES["demo"]
    if not data.startswith(BUILTIN_PREFIX):
        return None
    name = data[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_SIZES:
        raise UserError(f"--data: {data!r} names no built-in dataset; expected one of "
                        + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_SIZES) + " or a directory")
    return BUILTIN_SIZES[name]


def _ensure_arguments(num_ids, num_cams, seed, num_test_ids, queries_per_camera, occluded) -> dict:
    """What :func:`ensure_synthetic` passes to :func:`synthesize_market` (besides the path)."""
    return dict(num_ids=num_ids, num_cams=num_cams, seed=seed, num_test_ids=num_test_ids,
                queries_per_camera=queries_per_camera, occluded=occluded)


def builtin_plan(name: str, seed: int = DEFAULT_SEED) -> tuple[dict, list[_Shot]]:
    """``(settings, shots)`` of ``builtin:NAME`` exactly as :func:`ensure_synthetic` writes it
    (``settings`` includes ``occluded``), without rendering: for checking a full-size plan."""
    import inspect

    defaults = {key: parameter.default for key, parameter in inspect.signature(ensure_synthetic).parameters.items()
                if key != "log"}  # source.resolve_data calls ensure_synthetic(**BUILTIN_SIZES[name])
    arguments = _ensure_arguments(**{**defaults, **BUILTIN_SIZES[name], "seed": seed})
    occluded = arguments.pop("occluded")
    settings, shots = plan_dataset(**arguments)
    return {**settings, "occluded": bool(occluded)}, shots


def ensure_synthetic(num_ids: int = DEFAULT_NUM_IDS, num_cams: int = DEFAULT_NUM_CAMS,
                     seed: int = DEFAULT_SEED, log: Callable[[str], None] = print,
                     num_test_ids: int | None = None, queries_per_camera: int = 1,
                     occluded: bool = False) -> str:
    """The built-in dataset's path: written once into the cache, reused afterwards."""
    path = default_synthetic_dir(num_ids, num_cams, seed, num_test_ids, queries_per_camera, occluded)
    if os.path.isdir(path) and os.listdir(path):
        log(f"Using cached built-in synthetic dataset at {path}")
        return path
    log(f"Built-in synthetic dataset: writing {num_ids} identities x {num_cams} cameras "
        f"to {path} (once)")
    start = time.perf_counter()
    try:
        synthesize_market(path, **_ensure_arguments(num_ids, num_cams, seed, num_test_ids, queries_per_camera,
                                                    occluded))
    except DatasetError:
        if not (os.path.isdir(path) and os.listdir(path)):
            raise
        log(f"Using cached built-in synthetic dataset at {path} (written by another process)")
        return path
    log(f"Built-in synthetic dataset ready in {time.perf_counter() - start:.1f} s")
    return path
