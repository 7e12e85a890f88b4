"""Which dataset a ``--data`` value or a run's ``config.json`` names, and where its files are.

A run directory is portable: ``config.json`` names a built-in dataset by its
name (``builtin:demo``, ``builtin:ablate``), which is re-made on demand in
this machine's cache (``data/synth.py``, byte-identical for the same
settings), and a real dataset by its absolute path; when that path is not
here (moved, or the run dir was copied to another machine) the one line names
``--data`` as the fix. Run dirs written before names were stored hold the
absolute path of a built-in dataset's cache directory; such a path that is
gone is recognised by its directory name and re-made the same way. A
``folder:DIR`` / ``csv:FILE`` spec is stored with its absolute path and its
options (``layouts.py``), so the same split is read again.
"""

from __future__ import annotations

import os

from aaa_keras.data.layouts import LAYOUT_CHOICES, parse_spec
from aaa_keras.data.names import dataset_fingerprint
from aaa_keras.data.synth import BUILTIN_PREFIX, BUILTIN_SIZES, builtin_settings, default_synthetic_dir, \
    ensure_synthetic
from aaa_keras.errors import UserError

DEFAULT_BUILTIN = BUILTIN_PREFIX + "demo"  # what an empty --data means


def resolve_data(data: str, log=print) -> str:
    """The dataset root to use: ``data``, or a cached built-in synthetic dataset for ``""``
    (the demo size) or ``builtin:NAME`` (``data/synth.py``'s ``BUILTIN_SIZES``)."""
    settings = builtin_settings(data)
    if settings is not None:
        return ensure_synthetic(log=log, **settings)
    spec = parse_spec(data)
    if spec is not None:
        path = os.path.abspath(os.path.expanduser(spec.path))
        exists = os.path.isdir(path) if spec.kind == "folder" else os.path.isfile(path)
        if not exists:
            raise UserError(f"--data: {data}: {path} is not {'a directory' if spec.kind == 'folder' else 'a file'}")
        return spec.text()
    if not os.path.isdir(data):
        raise UserError(f"--data: {data} does not exist or is not a directory; expected a dataset root in one of "
                        f"the layouts {LAYOUT_CHOICES}, or a built-in name (omit --data for builtin:demo)")
    return os.path.abspath(data)


def portable_data(data: str) -> str:
    """How ``config.json`` names ``data``: a built-in dataset by its name (``""`` is
    ``builtin:demo``), a directory by its absolute path."""
    if builtin_settings(data) is not None:
        return data or DEFAULT_BUILTIN
    spec = parse_spec(data)
    return spec.text() if spec is not None else os.path.abspath(data)


def resolve_run_data(data: str | None, saved: str, run_dir: str, log=print) -> str:
    """The dataset root of a command on a trained run: ``data`` (its ``--data``) when given,
    else the run's own (``saved``, its ``config.json``'s ``data``)."""
    if data:
        return resolve_data(data, log)
    name = _builtin_name(saved)
    if name is not None:
        return resolve_data(name, log)
    spec = parse_spec(saved)
    here = os.path.exists(os.path.abspath(spec.path)) if spec is not None else os.path.isdir(saved)
    if not here:
        raise UserError(f"--run-dir {run_dir}: its dataset {saved} is not here (moved, or the run dir was "
                        "copied from another machine); pass --data with the dataset's root")
    return saved


def _builtin_name(saved: str) -> str | None:
    """``saved`` as a built-in dataset's name: itself, or, for an old run dir's absolute path of
    a built-in cache directory that is gone, the name of the built-in dataset kept there."""
    if builtin_settings(saved) is not None:
        return saved or DEFAULT_BUILTIN
    if parse_spec(saved) is not None or os.path.isdir(saved):
        return None
    for name, settings in BUILTIN_SIZES.items():
        if os.path.basename(os.path.normpath(saved)) == os.path.basename(default_synthetic_dir(**settings)):
            return BUILTIN_PREFIX + name
    return None


def own_data_changed(config, data: str | None, dataset, root: str) -> str | None:
    """A one-line warning when a run evaluated on its own data (no ``--data``, or the same one)
    finds it no longer matching the ``dataset_fingerprint`` stored at training, else None: files
    were added or removed, so a ``folder:`` / ``csv:`` split may differ from the one trained on
    (docs/decisions.md, "Your own data and the other benchmarks' layouts")."""
    stored = getattr(config, "dataset_fingerprint", None)
    if not stored or (data and data != config.data):
        return None
    now = dataset_fingerprint(dataset)
    if now == stored:
        return None
    changed = ", ".join(f"{key} {stored.get(key)} -> {value}" for key, value in now.items()
                        if stored.get(key) != value)
    return (f"warning: {root} no longer matches the data this run trained on ({changed}); test identities "
            "may differ from the run's split, so results are not comparable with its earlier ones")
