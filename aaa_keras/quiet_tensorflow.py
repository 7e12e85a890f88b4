"""TensorFlow imported quietly, when a command first needs it (the CLI's start-up; TensorFlow-free).

TF 2.21 logs through absl before Python can configure it (``I0000 ...
oneDNN custom operations are on``, ``cpu_feature_guard``, "All log messages
before absl::InitializeLog()"), ignoring ``TF_CPP_MIN_LOG_LEVEL`` for some of
it. :func:`install` puts a finder first on ``sys.meta_path`` that takes
TensorFlow's own module spec and runs its loader with file descriptor 2 on
/dev/null, on the first ``import tensorflow`` wherever it happens, then leaves.
So the CLI need not import TensorFlow up front: what a command refuses before
it needs TensorFlow (a run dir held by another writer, ``run_lock.py``; a bad
argument) costs no TensorFlow import (docs/reliability.md). No op runs here:
logical devices and multi-worker collectives must be configured before the
first op.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys


@contextlib.contextmanager
def stderr_to_devnull():
    """File descriptor 2 goes to /dev/null inside; Python errors raised inside print after."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The first ``import tensorflow`` with stderr hidden; see the module docstring."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            self._loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self._loader  # TensorFlow's own, from now on
        with stderr_to_devnull():
            self._loader.exec_module(module)


def install() -> None:
    """Make the first ``import tensorflow`` of this process a quiet one (once; nothing if imported)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())
