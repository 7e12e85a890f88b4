"""Every name a benchmark script imports from the library exists: the scripts are not run by the
suite, so a function moved to another module would otherwise break them unseen."""

import ast
import glob
import importlib
import os

import pytest

from conftest import REPO_ROOT

SCRIPTS = sorted(glob.glob(os.path.join(REPO_ROOT, "benchmarks", "*.py")))


def _library_imports(path):
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aaa_keras":
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_every_library_name_a_benchmark_imports_exists(path):
    missing = []
    for module, name in _library_imports(path):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{os.path.basename(path)} imports what the library no longer has: {missing}"
