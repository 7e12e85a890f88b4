"""Installing one version of an export atomically: partial directories, commit by rename, reject, stale cleanup.

An export of version ``V`` builds each of its directories (one per format, each
under its own parent, e.g. ``out/M`` for TF Serving) as
``<parent>/_partial_<V>_<pid>`` (TF Serving ignores names that are not
integers). :func:`versioned_install` is the one place that handles them::

    with versioned_install(version, order=("tflite", "saved_model"), clean=parents, log=log) as install:
        saved = install.partial("saved_model", parent)   # a fresh, empty directory
        ...                                              # write and verify into it
        if problems:
            raise UserError(f"... in {install.reject(rejected_root, label)}")

On leaving the block normally every partial directory is renamed to
``<parent>/<V>`` (in ``order``; all or nothing: a failed rename takes back
those already moved); on an error or Ctrl-C the partial directories are
removed. :meth:`VersionedInstall.reject` moves them, for inspection, to one
``<rejected_root>/<label>_<time>/<name>`` place, and the block must then raise.
A killed export leaves only ``_partial_<V>_<pid>`` directories, which the next
install removes (``clean``) once their process is gone.

These directory-level partials are named ``_partial_<version>_<pid>``; the
per-file temporaries of :func:`aaa_keras.files.atomic_path` are
``_partial_<pid>-<hex>_<name>`` files, which the stale-partial pattern never
matches.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil

from aaa_keras.errors import UserError
from aaa_keras.files import PARTIAL_PREFIX, fsync_directory
from aaa_keras.run_lock import pid_alive

_PARTIAL_DIR = re.compile(re.escape(PARTIAL_PREFIX) + r"(\d+)_(\d+)")  # _partial_<version>_<pid>


def versions_in(directory: str) -> list[int]:
    """Integer-named subdirectories (TF Serving's versions), sorted."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def choose_version(parents, version: int | None, model_name: str, out: str, what: str = "") -> int:
    """``version``, or one more than the highest under any of ``parents`` (directories); an existing
    version is refused with a one-line error (``what`` names the export, e.g. " for BoxMOT")."""
    existing = sorted(set().union(*(versions_in(parent) for parent in parents)))
    if version is None:
        return (existing[-1] + 1) if existing else 1
    if version in existing:
        raise UserError(f"--version {version}: {model_name} version {version}{what} already exists under {out} "
                        f"(versions: {', '.join(map(str, existing))}); omit --version to write "
                        f"{existing[-1] + 1}. Nothing was overwritten")
    return version


def partial_dir_name(version: int, pid: int | None = None) -> str:
    """``_partial_<version>_<pid>``: the name a version is built under before it is renamed into place."""
    return f"{PARTIAL_PREFIX}{int(version)}_{os.getpid() if pid is None else int(pid)}"


def remove_stale_partials(directory: str, log=print) -> None:
    """Remove ``_partial_<version>_<pid>`` directories left by a killed export (whose process is gone)."""
    if not os.path.isdir(directory):
        return
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        match = _PARTIAL_DIR.fullmatch(name)
        if match and os.path.isdir(path) and not pid_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            log(f"Removed {path}, left by an interrupted export")


class VersionedInstall:
    """The partial directories of one version being installed (see :func:`versioned_install`)."""

    def __init__(self, version: int, order=()):
        self.version = int(version)
        self._order = tuple(order)
        self._partials: dict[str, tuple[str, str]] = {}  # name -> (partial directory, final directory)
        self.rejected: str | None = None

    def partial(self, name: str, parent: str) -> str:
        """A fresh, empty ``<parent>/_partial_<version>_<pid>`` directory, installed as ``<parent>/<version>``."""
        if name in self._partials or self.rejected:
            raise RuntimeError(f"internal: partial {name!r} already made, or the install was rejected")
        os.makedirs(parent, exist_ok=True)
        path = os.path.join(parent, partial_dir_name(self.version))
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        self._partials[name] = (path, os.path.join(parent, str(self.version)))
        return path

    @property
    def partials(self) -> dict[str, str]:
        """``{name: partial directory}`` of what is being written, in the order made."""
        return {name: partial for name, (partial, _) in self._partials.items()}

    def final(self, name: str) -> str:
        """Where ``name``'s directory will be once committed (``<parent>/<version>``)."""
        return self._partials[name][1]

    def reject(self, rejected_root: str, label: str) -> str:
        """Move every partial directory to ``<rejected_root>/<label>_<time>/<name>``; returns that directory."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        rejected = os.path.join(rejected_root, f"{label}_{stamp}")
        os.makedirs(rejected, exist_ok=True)
        for name, (partial, _) in list(self._partials.items()):
            os.rename(partial, os.path.join(rejected, name))
            del self._partials[name]
        self.rejected = rejected
        return rejected

    def _commit(self) -> None:
        """Rename every partial directory into place, in ``order``; all or nothing."""
        rank = {name: i for i, name in enumerate(self._order)}
        items = sorted(self._partials.items(), key=lambda item: rank.get(item[0], len(rank)))
        committed = []
        try:
            for name, (partial, final) in items:
                try:
                    os.rename(partial, final)
                except OSError as error:
                    raise UserError(f"{final}: cannot move the finished export into place ({error}); another "
                                    "export may have written this version meanwhile. Nothing was overwritten"
                                    ) from None
                committed.append((partial, final))
                fsync_directory(os.path.dirname(final))
        except BaseException:
            for partial, final in reversed(committed):  # take back what was moved
                os.rename(final, partial)
            raise
        self._partials.clear()

    def _discard(self) -> None:
        for partial, _ in self._partials.values():
            shutil.rmtree(partial, ignore_errors=True)
        self._partials.clear()


@contextlib.contextmanager
def versioned_install(version: int, order=(), clean=(), log=print):
    """Yield a :class:`VersionedInstall` of ``version``; commit its partial directories on success.

    ``order``: the names in commit order (e.g. TF Serving's SavedModel last, so
    a server never sees a version whose other formats are missing); names not
    listed commit after them, in the order made. ``clean``: parent directories
    whose stale partials (left by a killed export) are removed first. On an
    error the partial directories are removed and the error propagates; after
    :meth:`VersionedInstall.reject` the block must raise (nothing is left to
    commit).
    """
    for parent in clean:
        remove_stale_partials(parent, log)
    install = VersionedInstall(version, order)
    try:
        yield install
        if install.rejected:
            raise RuntimeError(f"internal: the install was rejected to {install.rejected} but the block "
                               "went on without raising")
        install._commit()
    finally:
        install._discard()
