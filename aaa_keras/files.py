"""Writing files so that a reader never sees half of one, and reading them back or failing in one line.

Every file the project writes in place of another (JSON records, weights,
models, indexes, pictures) goes through :func:`atomic_path`: the content is
written to a temporary sibling, flushed and fsynced, then renamed over the
target, and the directory entry is fsynced. An error or a kill at any point
leaves the previous file (or none) and no temporary sibling behind from an
error; a kill can leave one, which carries :data:`PARTIAL_PREFIX` and the
writer's pid so it is recognisable and never read as the real file.

Reading back: every file the project wrote and reads again (run configs,
``done.json``, weights, logs, FAISS vectors, the index's SQLite, parity
reports, learned-metric ``.npz`` files) is read through :func:`read_back` or
inside :func:`reading`. A missing, empty, truncated or garbage file becomes one
:class:`~aaa_keras.errors.DamagedFile` line, ``PATH: WHAT is damaged
(REASON); REMEDY``, instead of the reader library's traceback.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import sqlite3
import zipfile

from aaa_keras.errors import DamagedFile, UserError

PARTIAL_PREFIX = "_partial_"


def partial_path(path: str) -> str:
    """A fresh temporary sibling for ``path`` (same directory, so the rename is atomic)."""
    unique = f"{os.getpid()}-{secrets.token_hex(3)}"
    return os.path.join(os.path.dirname(path), f"{PARTIAL_PREFIX}{unique}_{os.path.basename(path)}")


def is_partial(name: str) -> bool:
    """Whether a file name is a temporary sibling left by an interrupted write."""
    return os.path.basename(name).startswith(PARTIAL_PREFIX)


def fsync_directory(directory: str) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    The writer inside the block may be anything that takes a file name
    (``model.save_weights``, ``faiss.write_index``, ``figure.savefig``). On
    leaving the block normally the temporary file is fsynced and renamed over
    ``path``; on an error it is removed and the error propagates, ``path``
    untouched.
    """
    tmp = partial_path(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"{tmp}: the writer produced no file for {path}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_directory(os.path.dirname(path))


def write_bytes_atomically(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomically(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def json_text(payload, sort_keys: bool = False) -> str:
    """The project's JSON file format: indented, newline-terminated."""
    return json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n"


def write_json_atomically(path: str, payload, sort_keys: bool = False) -> None:
    write_text_atomically(path, json_text(payload, sort_keys))


# === Reading back ===

# What the readers raise on a damaged file: h5py OSError, FAISS RuntimeError, json ValueError, np.load
# EOFError / BadZipFile / ValueError, SQLite DatabaseError, csv.Error (a NUL byte), a record lacking a key (KeyError, TypeError)
DAMAGE_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, zipfile.BadZipFile,
                 sqlite3.DatabaseError, csv.Error)


def _reason(error: BaseException) -> str:
    """The gist of a reader's error in one short line (FAISS and HDF5 messages span lines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _sound_but_unreadable(error: BaseException) -> str | None:
    """What keeps a possibly sound file from being read (not damage: no "rebuild"), or None."""
    if isinstance(error, PermissionError):
        return "cannot be read ({}); check its permissions"
    if isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error)):
        return "is locked by another process ({}); try again when it is done"
    return None


@contextlib.contextmanager
def reading(path: str, what: str, remedy: str):
    """Inside the block, a reader's error on ``path`` becomes one DamagedFile line (UserErrors pass);
    a permission error or a lock held by another process is a plain UserError line instead."""
    try:
        yield
    except DAMAGE_ERRORS as error:
        not_damage = _sound_but_unreadable(error)
        if not_damage:
            raise UserError(f"{path}: {what} " + not_damage.format(_reason(error))) from None
        raise DamagedFile(f"{path}: {what} is damaged ({_reason(error)}); {remedy}") from None


def read_back(path: str, read, what: str, remedy: str):
    """``read(path)`` of a file the project wrote; missing, empty or unreadable -> one DamagedFile line."""
    if not os.path.isfile(path):
        raise DamagedFile(f"{path}: {what} is missing; {remedy}")
    if os.path.getsize(path) == 0:
        raise DamagedFile(f"{path}: {what} is empty (0 bytes); {remedy}")
    with reading(path, what, remedy):
        return read(path)


def _load_json(path: str):
    with open(path) as f:
        return json.load(f)


def read_json_back(path: str, what: str, remedy: str) -> dict:
    """A JSON object the project wrote (:func:`read_back`); anything but an object is damage too."""
    value = read_back(path, _load_json, what, remedy)
    if not isinstance(value, dict):
        raise DamagedFile(f"{path}: {what} is damaged (a JSON {type(value).__name__}, not an object); {remedy}")
    return value
