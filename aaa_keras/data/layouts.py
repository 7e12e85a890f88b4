"""Which layout a dataset is in, and reading it: :func:`load_dataset` (:func:`load_layout`).

``--data`` names a dataset three ways (``data/source.py`` resolves the
built-in names first):

- a directory, whose layout is recognised from what it holds:

  ========================  ==================================================================
  layout                    recognised by
  ========================  ==================================================================
  Market-1501               ``bounding_box_train/ query/ bounding_box_test/``, Market names
  DukeMTMC-reID             the same directories, Duke names (``0001_c2_f0046182.jpg``)
  Occluded-DukeMTMC         Duke's layout and names under a directory named ``*occ*``
                            (``Occluded_Duke``), or Occluded-Duke's own counts
  CUHK03-NP labeled/detected  Market's directories under ``cuhk03-np/labeled`` or ``.../detected``
                            (names ``0001_c1_1.png``); the ``cuhk03-np`` root itself holds both
  MSMT17 (V1 / V2)          ``list_train.txt list_val.txt list_query.txt list_gallery.txt`` with
                            ``train/ test/`` (V2: ``mask_train_v2/ mask_test_v2/``)
  Occluded-REID             ``occluded_body_images/`` (queries) and ``whole_body_images/``
  Partial-REID              ``partial_body_images/`` (queries) and ``whole_body_images/``
  ========================  ==================================================================

- ``folder:DIR``: one sub-folder per identity (``layouts_custom.py``);
- ``csv:FILE``: a CSV / TSV list ``path,pid,camid[,split]`` (``layouts_custom.py``).

A ``folder:`` / ``csv:`` spec carries its options after a ``?``, URL-encoded
(``folder:DIR?camera-pattern=c%28%3FP%3Ccam%3E%5Cd%2B%29&test-fraction=0.3&seed=1``;
the CLI's ``--camera-pattern`` writes that part), so that a run directory's
``config.json`` re-reads the same split.
"""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import quote, unquote

from aaa_keras.data.names import SPLITS, ReidDataset, is_cuhk03_root, load_market, name_format
from aaa_keras.errors import DatasetError, UserError

SPEC_KINDS = ("folder", "csv")
DEFAULT_TEST_FRACTION = 0.5  # Market-1501 and DukeMTMC-reID test on about half of their identities
DEFAULT_SPLIT_SEED = 0
_SAFE = "()<>\\+*[]{}^$|.,:;-_?!=~@ "  # left readable in a spec's options; '&', '%', '/', '#' are escaped

LAYOUT_CHOICES = (
    "Market-1501 / DukeMTMC-reID / Occluded-DukeMTMC / CUHK03-NP (bounding_box_train/ query/ "
    "bounding_box_test/), MSMT17 (list_*.txt), Occluded-REID (occluded_body_images/ whole_body_images/), "
    "Partial-REID (partial_body_images/ whole_body_images/), folder:DIR (a folder per identity) or "
    "csv:FILE (path,pid,camid[,split])")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A ``folder:`` or ``csv:`` dataset and its options."""

    kind: str  # "folder" or "csv"
    path: str
    camera_pattern: str | None = None  # re.search on the path relative to DIR (CSV: the row's path); group "cam"
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = DEFAULT_SPLIT_SEED

    def text(self) -> str:
        """The canonical spec: the absolute path, then the options that differ from the defaults."""
        options = []
        if self.camera_pattern is not None:
            options.append("camera-pattern=" + quote(self.camera_pattern, safe=_SAFE))
        if self.test_fraction != DEFAULT_TEST_FRACTION:
            options.append(f"test-fraction={self.test_fraction:g}")
        if self.seed != DEFAULT_SPLIT_SEED:
            options.append(f"seed={self.seed}")
        path = os.path.abspath(os.path.expanduser(self.path))
        return f"{self.kind}:{path}" + ("?" + "&".join(options) if options else "")


def parse_spec(text: str) -> DataSpec | None:
    """The ``folder:`` / ``csv:`` spec in ``text``, or None for anything else; a UserError naming
    a bad option."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SPEC_KINDS:
        return None
    path, _, query = rest.partition("?")
    if not path:
        raise UserError(f"--data {text}: give the {'directory' if kind == 'folder' else 'list file'} "
                        f"after '{kind}:', e.g. {kind}:{'~/crops' if kind == 'folder' else '~/crops/list.csv'}")
    values = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key not in ("camera-pattern", "test-fraction", "seed"):
            raise UserError(f"--data {text}: option {item!r} is not one of camera-pattern=REGEX, "
                            "test-fraction=F, seed=N (after '?', joined with '&')")
        values[key] = unquote(value)
    spec = DataSpec(kind, path)
    if "camera-pattern" in values:
        spec = dataclasses.replace(spec, camera_pattern=check_camera_pattern(values["camera-pattern"]))
    if "test-fraction" in values:
        try:
            fraction = float(values["test-fraction"])
        except ValueError:
            fraction = -1.0
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"--data {text}: test-fraction={values['test-fraction']} is not a number in [0, 1]")
        spec = dataclasses.replace(spec, test_fraction=fraction)
    if "seed" in values:
        try:
            spec = dataclasses.replace(spec, seed=int(values["seed"]))
        except ValueError:
            raise UserError(f"--data {text}: seed={values['seed']} is not an integer") from None
    return spec


def check_camera_pattern(pattern: str) -> str:
    """``pattern`` if it compiles and has a group named ``cam``, else a UserError naming --camera-pattern."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise UserError(f"--camera-pattern {pattern}: not a regular expression ({error})") from None
    if "cam" not in compiled.groupindex:
        raise UserError(f"--camera-pattern {pattern}: needs a group named cam, e.g. "
                        r"'_c(?P<cam>\d+)' for 0001_c3_0042.jpg")
    return pattern


def with_camera_pattern(data: str | None, pattern: str | None) -> str | None:
    """``data`` with ``--camera-pattern`` written into its spec (``data`` itself when ``pattern`` is None)."""
    if pattern is None:
        return data
    spec = parse_spec(data or "")
    if spec is None:
        raise UserError(f"--camera-pattern applies to --data folder:DIR or csv:FILE, not {data or 'the default'}; "
                        "the other layouts carry their cameras in their file names")
    return dataclasses.replace(spec, camera_pattern=check_camera_pattern(pattern)).text()


# === Recognising a directory ===

def detect_layout(root: str) -> str | None:
    """``market`` (Market-1501's directories), ``msmt17``, ``partial-reid``, ``occluded-reid``,
    ``cuhk03-np-root`` (``labeled/`` and ``detected/``), or None."""
    def has(*names):
        return all(os.path.exists(os.path.join(root, name)) for name in names)

    if any(has(name) for name in SPLITS.values()):
        return "market"
    if msmt17_root(root) is not None:
        return "msmt17"
    if has("partial_body_images"):
        return "partial-reid"
    if has("occluded_body_images"):
        return "occluded-reid"
    if cuhk03_subsets(root):
        return "cuhk03-np-root"
    return None


def msmt17_root(root: str) -> str | None:
    """The directory holding MSMT17's list files: ``root`` or its single ``MSMT17_V*`` child."""
    if os.path.isfile(os.path.join(root, "list_query.txt")):
        return root
    children = [os.path.join(root, name) for name in sorted(os.listdir(root)) if name.upper().startswith("MSMT17")]
    found = [child for child in children if os.path.isfile(os.path.join(child, "list_query.txt"))]
    return found[0] if len(found) == 1 else None


def cuhk03_subsets(root: str) -> list[str]:
    """``root/labeled`` and ``root/detected`` that hold Market-1501's directories (CUHK03-NP's root)."""
    return [os.path.join(root, name) for name in ("labeled", "detected")
            if os.path.isdir(os.path.join(root, name, SPLITS["query"]))]


def load_dataset(root: str) -> ReidDataset:
    """Read a dataset: a root in any layout this module recognises, or a ``folder:`` / ``csv:`` spec
    (``data/source.py`` resolves ``--data`` to one of these). Also ``aaa_keras.data.load_dataset``."""
    return load_layout(os.fspath(root))


def load_layout(text: str, allow_tiff: bool = False) -> ReidDataset:
    """Read the dataset ``text`` names (a directory or a ``folder:`` / ``csv:`` spec).

    ``allow_tiff``: list TIFF images (Occluded-REID's) instead of refusing
    them; only ``data check`` does, to count them and name the conversion.
    """
    spec = parse_spec(text)
    if spec is not None:
        from aaa_keras.data import layouts_custom

        return layouts_custom.load_spec(spec)
    root = text
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise DatasetError(f"{root}: dataset root {what}; expected a directory in one of the layouts "
                           f"{LAYOUT_CHOICES}")
    layout = detect_layout(root)
    if layout == "cuhk03-np-root":
        subsets = " or ".join(cuhk03_subsets(root))
        raise DatasetError(f"{root}: CUHK03-NP holds two protocols, labeled/ and detected/; pass {subsets}")
    if layout in ("msmt17", "partial-reid", "occluded-reid"):
        from aaa_keras.data import layouts_bench

        return layouts_bench.load(layout, root, allow_tiff)
    if layout is None:  # no split folder at all: a Market root with one missing reads as before
        subdirs = [name for name in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, name))]
        if subdirs:
            inside = [os.path.join(root, name) for name in subdirs if detect_layout(os.path.join(root, name))]
            if inside:
                raise DatasetError(f"{root}: no dataset layout here, but in {' and '.join(inside[:2])}; "
                                   "pass that directory")
            raise DatasetError(f"{root}: no dataset layout recognised (sub-folders {', '.join(subdirs[:4])}"
                               f"{', ...' if len(subdirs) > 4 else ''}); expected {LAYOUT_CHOICES}; "
                               f"a folder per identity is read with --data folder:{root}")
    return name_market_layout(load_market(root))


_OCCLUDED_DUKE_COUNTS = (15618, 2210)  # training and query images of Occluded-DukeMTMC


def name_market_layout(dataset: ReidDataset) -> ReidDataset:
    """``dataset`` (Market-1501's directories) with its layout named from its file names."""
    cuhk03 = is_cuhk03_root(dataset.root)
    formats = {name_format(r.path, cuhk03) for r in dataset.train + dataset.query + dataset.gallery}
    notes = []
    if formats == {"cuhk03"}:
        subset = os.path.basename(os.path.normpath(dataset.root)).lower()
        layout = "CUHK03-NP" + (f" {subset}" if subset in ("labeled", "detected") else "")
    elif formats == {"duke"}:
        occluded = "occ" in os.path.basename(os.path.normpath(dataset.root)).lower() or (
            len(dataset.train), len(dataset.query)) == _OCCLUDED_DUKE_COUNTS
        layout = "Occluded-DukeMTMC" if occluded else "DukeMTMC-reID"
        if occluded:
            notes.append("Occluded-DukeMTMC: every query is occluded, and about 10 % of the gallery "
                         "(the benchmark's protocol; Duke's layout and names)")
    elif formats == {"market"}:
        layout = "Market-1501"
    else:
        layout = "Market-1501 layout, mixed file names"
    return dataclasses.replace(dataset, layout=layout, notes=notes)
