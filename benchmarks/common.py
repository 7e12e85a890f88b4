"""What every benchmark script shares: the repo on sys.path, a one-line machine description, and
round-robin timing of steps."""

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


def round_robin(calls: dict, rounds: int) -> dict:
    """``{name: [seconds, ...]}``: each of ``calls`` (name -> a no-argument function) run twice to
    trace, then once per round in turn, so load from other processes falls on every call alike.
    A call's result (a tensor, or a dict of them as ``train_on_batch`` returns) is read back to
    the host inside the timing, so asynchronous work is counted."""
    import time

    import numpy as np

    for fn in calls.values():  # tracing
        fn(), fn()
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            out = fn()
            float(np.asarray(next(iter(out.values())) if isinstance(out, dict) else out))
            samples[name].append(time.perf_counter() - start)
    return samples


def spread_line(samples: dict) -> str:
    """One line: the min-max milliseconds of each call of :func:`round_robin`."""
    return "Spread (min-max ms): " + "; ".join(f"{n}: {min(v) * 1000:.0f}-{max(v) * 1000:.0f}"
                                               for n, v in samples.items())
