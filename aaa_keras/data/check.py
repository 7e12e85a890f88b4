"""``python cli.py data check DATA``: count what a dataset holds and find what is wrong.

``DATA`` is anything ``--data`` accepts: a directory in any layout
``layouts.py`` recognises, ``folder:DIR``, ``csv:FILE`` or a built-in name.
Hard errors (a DatasetError naming the file or directory): a missing or empty
split, a file name or list row that does not parse, an image that is empty or
does not decode. Warnings (errors with ``strict=True``): query ids with no
gallery image of the same id from another camera (evaluation skips those
queries; none at all names the two fixes), junk or distractor images in the
query or training split, identities shared by the training and test splits,
file names mixing Market and Duke patterns, TIFF images (named with the
conversion). The report also says which layout was recognised, how it was
read (``ReidDataset.notes``), the camera rule, and, where the root has an
``occlusion.json`` (``builtin:occluded``), the share of occluded images.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import time

import numpy as np

from aaa_keras.data.names import (
    DISTRACTOR_PID, JUNK_PID, SPLITS, ImageRecord, ReidDataset, is_cuhk03_root, name_format)
from aaa_keras.data.check_notes import camera_rule, occlusion_shares
from aaa_keras.data.layouts_bench import TIFF_EXTENSIONS
from aaa_keras.errors import DatasetError
from aaa_keras.files import write_text_atomically

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
    naming: str  # "Market-1501", "DukeMTMC-reID", "CUHK03-NP" or "mixed"; for other layouts the layout
    splits: dict[str, SplitStats]
    warnings: list[str]
    decoded: bool
    layout: str = ""  # the layout's name (layouts.py), e.g. "Occluded-DukeMTMC", "folder (...)"
    notes: list = dataclasses.field(default_factory=list)  # how the data was read, the camera rule, occlusion

    @property
    def ok(self) -> bool:
        return not self.warnings


def decode_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file as the training pipeline decodes it, or a DatasetError naming it."""
    sizes, errors = decode_files([path])
    if path in errors:
        raise DatasetError(f"{path}: does not decode ({errors[path]}); replace or delete it")
    return sizes[path]


def _decode_error(path: str) -> str:
    """Why TensorFlow's decoder rejects ``path``, in a few words."""
    import tensorflow as tf

    from aaa_keras.data.pipeline import decode_pixels, op_error_reason

    try:
        size = os.path.getsize(path)
    except OSError as error:
        return f"cannot be read: {error.strerror}"
    if size == 0:
        return "empty file, 0 bytes"
    try:
        decode_pixels(tf.io.read_file(path))
    except tf.errors.OpError as error:
        return f"{size} bytes: {op_error_reason(error)}"
    return "decode failed"  # failed in the batch pass only (e.g. changed meanwhile)


def decode_files(paths) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Decode every file with the pipeline's decoder: ``({path: (h, w)}, {bad path: reason})``.

    One parallel ``tf.data`` pass over all files (errors dropped with
    ``ignore_errors``); the files missing from its output are decoded again
    one by one to say why they fail.
    """
    import tensorflow as tf

    from aaa_keras.data.pipeline import decode_pixels

    paths = list(dict.fromkeys(paths))
    sizes: dict[str, tuple[int, int]] = {}
    with _quiet_native_stderr():  # libjpeg's own complaints; the bad files are reported below
        if paths:
            files = tf.data.Dataset.from_tensor_slices(np.asarray(paths, dtype=object).astype(str))
            shapes = files.map(lambda p: (p, tf.shape(decode_pixels(tf.io.read_file(p)))[:2]),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
            for path, shape in shapes.ignore_errors().as_numpy_iterator():
                sizes[path.decode()] = (int(shape[0]), int(shape[1]))
        errors = {path: _decode_error(path) for path in paths if path not in sizes}
    return sizes, errors


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 (TensorFlow's C++ log lines) for a block that prints nothing itself."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    decodable = [r.path for r in records if not r.path.lower().endswith(TIFF_EXTENSIONS)]
    if decode and decodable:
        decoded, errors = decode_files(decodable)
        if errors:
            raise DatasetError(bad_images_message(errors, "check"))
        sizes = list(decoded.values())
        stats.min_size = min(sizes, key=lambda s: s[0] * s[1])
        stats.max_size = max(sizes, key=lambda s: s[0] * s[1])
    return stats


# === The image check before training and evaluation ===

IMAGE_CHECK_FILE = "image_check.json"
MAX_NAMED_BAD = 10  # bad files named in one error before "and N more"


def bad_images_message(errors: dict[str, str], purpose: str = "fit") -> str:
    """One line naming the bad files (up to :data:`MAX_NAMED_BAD`) and what to do."""
    count = f"{len(errors)} images do not" if len(errors) > 1 else "1 image does not"
    fix = "replace or delete them" if len(errors) > 1 else "replace or delete it"
    if purpose != "check":
        fix += ", or pass --skip-bad-images to leave them out of this run"
    pipeline = "training" if purpose == "fit" else "input"
    return f"{count} decode with TensorFlow's decoder (the one the {pipeline} pipeline uses): {named_bad_images(errors)}; {fix}"


def named_bad_images(errors: dict[str, str]) -> str:
    """``"PATH (reason), ..."``, up to :data:`MAX_NAMED_BAD`, then ``", and N more"``."""
    named = [f"{path} ({reason})" for path, reason in sorted(errors.items())[:MAX_NAMED_BAD]]
    more = f", and {len(errors) - MAX_NAMED_BAD} more" if len(errors) > MAX_NAMED_BAD else ""
    return ", ".join(named) + more


def _load_cache(path: str, decoder: str) -> dict:
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("decoder") != decoder:
        return {}
    files = cache.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(path: str, decoder: str, files: dict) -> None:
    """Best effort: a read-only run dir only means the next run decodes again."""
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text_atomically(path, json.dumps({"decoder": decoder, "files": files}))


def _stamp(path: str) -> list | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def verify_images(dataset: ReidDataset, splits, cache_dir: str | None, skip_bad: bool = False,
                  log=print, purpose: str = "fit") -> ReidDataset:
    """Decode every image of ``splits`` once, as the pipeline will; drop or refuse the bad ones.

    Results are cached in ``cache_dir/image_check.json`` by absolute path,
    file size and modification time, so a second run decodes only new or
    changed files. A bad file raises a DatasetError naming every bad file
    (up to :data:`MAX_NAMED_BAD`) and ``--skip-bad-images``; with
    ``skip_bad`` they are dropped from the returned dataset, each named in
    the log, with a count.
    """
    import tensorflow as tf

    from aaa_keras.data.pipeline import DECODER

    decoder = f"{DECODER} tensorflow {tf.__version__}"
    cache_path = os.path.join(cache_dir, IMAGE_CHECK_FILE) if cache_dir else None
    cache = _load_cache(cache_path, decoder) if cache_path else {}
    records = [(split, r) for split in splits for r in getattr(dataset, split)]
    stamps = {r.path: _stamp(r.path) for _, r in records}
    known = {p: cache.get(os.path.abspath(p)) for p in stamps}
    unchecked = [p for p, stamp in stamps.items() if not (known[p] and known[p][:2] == stamp)]
    if unchecked:
        started = time.time()
        _, errors = decode_files(unchecked)
        for path in unchecked:
            cache[os.path.abspath(path)] = [*(stamps[path] or [-1, -1]), errors.get(path)]
        if len(unchecked) > 100 or time.time() - started > 5:
            log(f"Checked {len(unchecked)} images with the pipeline's decoder in {time.time() - started:.0f} s"
                + (f" (cached in {cache_path})" if cache_path else ""))
        if cache_path:
            _save_cache(cache_path, decoder, cache)
    bad = {p: cache[os.path.abspath(p)][2] for p in stamps if cache[os.path.abspath(p)][2]}
    if not bad:
        return dataset
    if not skip_bad:
        raise DatasetError(bad_images_message(bad, purpose))
    named = set(sorted(bad)[:MAX_NAMED_BAD])
    for split, record in records:
        if record.path in named:
            log(f"Skipping a bad {split} image: {record.path} ({bad[record.path]})")
    per_split = {split: sum(r.path in bad for s, r in records if s == split) for split in splits}
    log(f"--skip-bad-images: left out {len(bad)} image{'s' if len(bad) > 1 else ''} that did not decode ("
        + ", ".join(f"{split} {n}" for split, n in per_split.items()) + ")")
    kept = {split: [r for r in getattr(dataset, split) if r.path not in bad] for split in splits}
    return dataclasses.replace(dataset, **kept)


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
    num_query_ids = len({r.pid for r in dataset.query if r.is_identity})
    if not num_query_ids:
        warnings.append(
            f"{query_dir}: no query image with a person id, so evaluation has nothing to rank; a query needs "
            "another image of its identity in the gallery (from another camera): give test identities two or more "
            "images, in two or more cameras")
    elif unmatched and len(unmatched) == num_query_ids:
        warnings.append(
            f"{query_dir}: no query has a gallery image of its identity from another camera, so this split gives "
            "no valid query (a query is matched only against other cameras); fix: give the images distinct camera "
            "ids (a camera folder level, --camera-pattern, the CSV's camid), or evaluate with --same-camera-ok for "
            "single-camera data (another protocol, written in the result)")
    elif unmatched:
        examples = ", ".join(f"{pid:04d} (camera {'/'.join(map(str, cams))})"
                             for pid, cams in sorted(unmatched.items())[:_MAX_LISTED])
        more = ", ..." if len(unmatched) > _MAX_LISTED else ""
        warnings.append(
            f"{query_dir}: {len(unmatched)} of {num_query_ids} query ids have no gallery image "
            f"of the same id from another camera: {examples}{more}; evaluation skips them")
    warnings += _non_identity_warning(dataset.query, query_dir, "query images", "evaluation skips them")
    return warnings


def _non_identity_warning(records, directory: str, what: str, consequence: str) -> list[str]:
    """A warning naming junk (-1) / distractor (0000) images where identities are expected."""
    not_identities = [r for r in records if not r.is_identity]
    if not not_identities:
        return []
    return [f"{directory}: {len(not_identities)} {what} are junk (-1) or distractors (0000), e.g. "
            f"{os.path.basename(not_identities[0].path)}; {consequence}"]


def _train_warnings(dataset: ReidDataset, train_dir: str) -> list[str]:
    warnings = _non_identity_warning(dataset.train, train_dir, "training images", "training ignores them")
    train_ids = {r.pid for r in dataset.train_identities()}
    test_ids = {r.pid for r in dataset.query + dataset.gallery if r.is_identity}
    shared = train_ids & test_ids
    if shared:
        warnings.append(
            f"{train_dir}: {len(shared)} training ids also appear in query/gallery "
            f"({_id_list(shared)}); test identities should be unseen in training")
    return warnings


def _naming(dataset: ReidDataset) -> str:
    if dataset.sources.get("query") != os.path.join(dataset.root, SPLITS["query"]):
        return dataset.layout  # not Market-1501's directories: the layout is the naming
    cuhk03 = is_cuhk03_root(dataset.root)
    formats = {name_format(r.path, cuhk03) for r in dataset.train + dataset.query + dataset.gallery}
    titles = {**_NAMING_TITLES, "cuhk03": "CUHK03-NP"}
    return titles[formats.pop()] if len(formats) == 1 else "mixed"


def check_data(data: str, strict: bool = False, decode: bool = True, log=print) -> list[CheckReport]:
    """``check_dataset`` on anything ``--data`` accepts: a built-in name is made (or found) first,
    and CUHK03-NP's root gives one report per protocol (labeled, detected)."""
    from aaa_keras.data.layouts import cuhk03_subsets, detect_layout, parse_spec
    from aaa_keras.data.source import resolve_data
    from aaa_keras.data.synth import builtin_settings

    if builtin_settings(data) is not None:
        data = resolve_data(data, log)
    if parse_spec(data) is None and os.path.isdir(data) and detect_layout(data) == "cuhk03-np-root":
        return [check_dataset(subset, strict, decode) for subset in cuhk03_subsets(data)]
    return [check_dataset(data, strict, decode)]


def check_dataset(root: str, strict: bool = False, decode: bool = True) -> CheckReport:
    """Count and validate a dataset (``root``: a directory in any layout, or a ``folder:`` /
    ``csv:`` spec).

    Raises DatasetError for a missing root or split, an empty split, a file
    name or list row that does not parse, or (with ``decode``) an image that
    does not decode. With ``strict`` every warning is an error too.
    """
    from aaa_keras.data.layouts import load_layout

    dataset = load_layout(root, allow_tiff=True)
    directories = {split: dataset.sources.get(split) or dataset.sources.get("all") or "-"
                   for split in SPLITS}
    splits = {split: _split_stats(split, directories[split], getattr(dataset, split), decode)
              for split in SPLITS}
    naming = _naming(dataset)
    warnings = _query_warnings(dataset, directories["query"])
    warnings += _train_warnings(dataset, directories["train"])
    if naming == "mixed":
        warnings.append(f"{dataset.root}: file names mix Market-1501 and DukeMTMC-reID patterns")
    tiff = [r.path for r in dataset.query + dataset.gallery + dataset.train if r.path.lower().endswith(TIFF_EXTENSIONS)]
    if tiff:
        warnings.append(f"{dataset.root}: {len(tiff)} TIFF images (e.g. {tiff[0]}), which TensorFlow's decoder does "
                        f"not read; convert them once: python -m aaa_keras.data.layouts_bench {dataset.root} "
                        f"{dataset.root.rstrip(os.sep)}-png")
    notes = list(dataset.notes) + [camera_rule(dataset)]
    occlusion, occlusion_warning = occlusion_shares(dataset)
    notes += [occlusion] if occlusion else []
    warnings += [occlusion_warning] if occlusion_warning else []
    if strict and warnings:
        raise DatasetError(f"strict check failed: {'; '.join(warnings)}")
    return CheckReport(root=dataset.root, naming=naming, splits=splits, warnings=warnings,
                       decoded=decode, layout=dataset.layout, notes=notes)


def _directory_text(directory: str) -> str:
    """A split's source as the table shows it: a directory's name with ``/``, a list file's name."""
    if os.path.isdir(directory):
        return os.path.basename(os.path.normpath(directory)) + "/"
    return os.path.basename(directory)


def _size_text(stats: SplitStats) -> str:
    if stats.min_size is None:
        return "-"
    low, high = (f"{h}x{w}" for h, w in (stats.min_size, stats.max_size))
    return low if low == high else f"{low}..{high}"


def format_report(report: CheckReport) -> str:
    """A small table of the counts, then the warnings, for printing."""
    header = ("split", "directory", "images", "ids", "cameras", "junk", "distractors", "size")
    rows = [header] + [
        (s.split, _directory_text(s.directory), str(s.num_images), str(s.num_ids),
         str(s.num_cameras), str(s.num_junk), str(s.num_distractors), _size_text(s))
        for s in report.splits.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left_aligned = {0, 1}

    def line(row) -> str:
        cells = [cell.ljust(w) if i in left_aligned else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    naming = f" ({report.naming} file names)" if report.naming != report.layout else ""
    lines = [f"Dataset {report.root}: layout {report.layout or report.naming}{naming}", line(header)]
    lines += [line(row) for row in rows[1:]]
    lines += [f"  {note}" for note in report.notes]
    if report.warnings:
        lines.append(f"{len(report.warnings)} warning(s):")
        lines += [f"  - {warning}" for warning in report.warnings]
    else:
        checked = "names and images" if report.decoded else "names (images not decoded)"
        lines.append(f"OK: {checked} checked, no problems found")
    return "\n".join(lines)
