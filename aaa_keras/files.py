"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os

PARTIAL_PREFIX = "_partial_"


def partial_path(path: str) -> str:
    """The temporary sibling a file is written to before it is renamed into place."""
    return os.path.join(os.path.dirname(path), PARTIAL_PREFIX + os.path.basename(path))


def write_json_atomically(path: str, payload, sort_keys: bool = False) -> None:
    """``json.dump`` to a temporary sibling, then rename: an interruption leaves the old file."""
    tmp = partial_path(path)
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=sort_keys)
        f.write("\n")
    os.replace(tmp, path)
