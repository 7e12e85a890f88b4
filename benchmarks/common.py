"""What every benchmark script shares: the repo on sys.path and a one-line machine description."""

import os
import platform
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def machine_description() -> str:
    """Platform, CPU count, memory and the numeric stack, for the record beside a measurement."""
    import numpy as np

    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{memory_gib:.0f} GiB RAM, Python {platform.python_version()}, numpy {np.__version__}"
    )
