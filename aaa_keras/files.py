"""Writing files so that a reader never sees half of one: the project's one atomic writer.

Every file the project writes in place of another (JSON records, weights,
models, indexes, pictures) goes through :func:`atomic_path`: the content is
written to a temporary sibling, flushed and fsynced, then renamed over the
target, and the directory entry is fsynced. An error or a kill at any point
leaves the previous file (or none) and no temporary sibling behind from an
error; a kill can leave one, which carries :data:`PARTIAL_PREFIX` and the
writer's pid so it is recognisable and never read as the real file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets

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
