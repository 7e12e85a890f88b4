"""``embed``: your crops to vectors, with any exported model, into one ``.npz``.

``embed_to_file(model, images, out)`` reads the image files of a folder
(recursively) or a glob pattern, embeds them with an exported model of any
format (:func:`aaa_keras.deploy.runtime.load_exported`: a SavedModel
directory, ``.tflite`` float / int8, ``.onnx``, an OpenVINO ``.xml``, and the
``export --for boxmot`` files) in batches with a progress line (as ``index``),
and writes, atomically, an ``.npz`` with:

- ``embeddings``: float32 ``[N, D]``, L2-normalised (a dot product is the cosine);
- ``paths``: the absolute path of each row;
- ``pid``, ``camid``: int32 person and camera id parsed from a Market-1501 or
  DukeMTMC-reID file name (``aaa_keras.data.names.parse_name``), and ``named``
  (bool), whether the name parsed; where it did not, ``pid`` and ``camid`` are
  -1 and mean nothing (a parsed junk crop of Market has ``pid`` -1 with
  ``named`` true);
- ``model``, ``model_kind``, ``image_size``: which model made them.

A file that does not decode stops the run before any embedding, named with
every other bad one (the check ``index`` makes); ``skip_bad_images`` leaves
them out and names them in one line.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from aaa_keras.data.names import is_image_file, parse_name
from aaa_keras.errors import DatasetError, UserError
from aaa_keras.files import atomic_path

OUT_SUFFIXES = (".npz",)


def list_image_files(images: str) -> list[str]:
    """Absolute paths of the images of a folder (recursive, hidden entries skipped), a glob pattern, or one
    image file; sorted. UserError naming ``--images`` when there are none."""
    if not images:
        raise UserError("--images: expected a folder of crops or a glob pattern such as 'crops/*.jpg'")
    if os.path.isdir(images):
        files = []
        for directory, subdirs, names in os.walk(images):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            files += [os.path.join(directory, name) for name in names if is_image_file(name)]
        if not files:
            raise UserError(f"--images {images}: no images (.jpg, .jpeg, .png) in this folder or below")
    elif glob.has_magic(images):
        matches = glob.glob(images, recursive=True)
        files = [path for path in matches if os.path.isfile(path) and is_image_file(os.path.basename(path))]
        if not files:
            what = (f"matches {len(matches)} paths but no image files (.jpg, .jpeg, .png)" if matches
                    else "matches no file")
            raise UserError(f"--images {images}: the pattern {what} (quote the pattern so the shell does not "
                            "expand it)")
    elif os.path.isfile(images):
        if not is_image_file(os.path.basename(images)):
            raise UserError(f"--images {images}: not an image file name (expected .jpg, .jpeg or .png)")
        files = [images]
    else:
        raise UserError(f"--images {images}: no such folder or file, and not a glob pattern (*, ?, [...])")
    return sorted(os.path.abspath(path) for path in files)


def identities(paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pid, camid, named)`` arrays from the file names (-1, -1, False where a name does not parse)."""
    pids, camids, named = [], [], []
    for path in paths:
        try:
            pid, camid = parse_name(path)
        except DatasetError:
            pid, camid, ok = -1, -1, False
        else:
            ok = True
        pids.append(pid), camids.append(camid), named.append(ok)
    return np.array(pids, np.int32), np.array(camids, np.int32), np.array(named, bool)


def _drop_bad_images(paths: list[str], images: str, skip_bad_images: bool, log) -> list[str]:
    from aaa_keras.data.check import bad_images_message, decode_files, named_bad_images

    _, errors = decode_files(paths)
    if not errors:
        return paths
    if not skip_bad_images:
        raise DatasetError(f"--images {images}: " + bad_images_message(errors, "embed") + "; nothing was written")
    log(f"--skip-bad-images: left out {len(errors)} image{'s' if len(errors) > 1 else ''} that did not decode: "
        f"{named_bad_images(errors)}")
    kept = [path for path in paths if path not in errors]
    if not kept:
        raise DatasetError(f"--images {images}: none of the {len(paths)} images decodes; nothing was written")
    return kept


def embed_to_file(model_path: str, images: str, out: str, batch_size: int = 32, skip_bad_images: bool = False,
                  num_threads: int = 2, log=print) -> dict:
    """Embed the images of ``images`` (folder, glob or file) with the exported ``model_path`` into ``out``.

    Returns ``{"out", "num_images", "num_named", "embedding_dim", "model_kind", "num_skipped"}``.
    """
    from aaa_keras.deploy.runtime import embed_files, load_exported

    if not str(out).lower().endswith(OUT_SUFFIXES):
        raise UserError(f"--out {out}: expected a .npz file name (embeddings, paths, pid, camid)")
    if os.path.isdir(out):
        raise UserError(f"--out {out}: is a directory; expected a .npz file name")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"--out {out}: the folder {parent} does not exist")
    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {batch_size}")
    paths = list_image_files(images)
    model = load_exported(model_path, num_threads)
    kept = _drop_bad_images(paths, images, skip_bad_images, log)
    log(f"Embedding {len(kept)} images of {images} with {model.kind} {model_path} "
        f"({model.image_size[0]}x{model.image_size[1]} -> {model.embedding_dim}-d)")
    embeddings = embed_files(model, kept, batch_size)
    pid, camid, named = identities(kept)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, embeddings=embeddings.astype(np.float32), paths=np.array(kept), pid=pid, camid=camid,
                 named=named, model=np.array(os.path.abspath(model_path)), model_kind=np.array(model.kind),
                 image_size=np.array(model.image_size, np.int32))
    log(f"Wrote {out}: {len(kept)} embeddings of {model.embedding_dim} dimensions (L2-normalised); "
        f"{int(named.sum())} carry a person id and camera in their name")
    return {"out": out, "num_images": len(kept), "num_named": int(named.sum()),
            "embedding_dim": int(model.embedding_dim), "model_kind": model.kind,
            "num_skipped": len(paths) - len(kept)}
