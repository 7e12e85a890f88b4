"""Per-stage step times, their ratios to stage 1, and the end-of-stage diagnostics, from `fit`'s log.

Reads the one-line-per-epoch log that `fit` writes when its output is not a
terminal (or with ``AAA_KERAS_VERBOSE=2``), e.g.
``AAA_KERAS_VERBOSE=2 python cli.py fit --stage adversarial > fit.log 2>&1``.
A step's time is Keras' ``ms/step`` when it prints milliseconds, else the
epoch's seconds over its steps (Keras rounds ``s/step`` to whole seconds). Per
stage: the median over epochs after the first (the first holds the tracing),
the ratio to stage 1's median when the same log has stage 1, the last epoch's
attention diagnostics, and the evaluation line(s) at the end.

    python benchmarks/epoch_log_ratios.py runs/demo.log
    python benchmarks/epoch_log_ratios.py runs/a.log runs/b.log --stage1-from runs/a.log
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys

STAGE = re.compile(r"^Stage (baseline|attention|adversarial): .*\d+ steps x \d+ epochs")
EPOCH = re.compile(r"^(\d+)/(\d+) - (\d+)s - (\d+)(ms|s)/step - (.*)$")
DIAGNOSTICS = ("hit_rate", "argmax_agreement", "cell_rank_correlation", "efficacy", "gate_rate")


def read(path: str) -> dict:
    """``{stage: {"steps": [seconds per step per epoch], "metrics": {name: last epoch's value}}}``."""
    stages, current, evaluation = {}, None, []
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        match = STAGE.match(line)
        if match:
            current = stages.setdefault(match.group(1), {"steps": [], "metrics": {}})
            continue
        match = EPOCH.match(line)
        if match and current is not None:
            steps, epoch_s, value, unit = int(match.group(2)), int(match.group(3)), int(match.group(4)), match.group(5)
            current["steps"].append(value / 1000 if unit == "ms" else epoch_s / steps)
            current["metrics"] = {k: float(v) for k, v in re.findall(r"(\w+): ([-\d.e+]+)", match.group(6))}
        elif re.match(r"(metric\s+Rank-1|euclidean|cosine)\s", line):
            evaluation.append(line.strip())
    return {"stages": stages, "evaluation": evaluation}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--stage1-from", default=None,
                        help="take stage 1's step from this log (a run that reused a copied stage 1)")
    args = parser.parse_args(argv)
    reference = read(args.stage1_from)["stages"].get("baseline") if args.stage1_from else None
    for path in args.logs:
        log = read(path)
        print(f"== {path}")
        base = log["stages"].get("baseline") or reference
        base_step = statistics.median(base["steps"][1:] or base["steps"]) if base else None
        for stage, values in log["stages"].items():
            later = values["steps"][1:] or values["steps"]
            if not later:
                continue
            step = statistics.median(later)
            ratio = f", {step / base_step:.2f}x stage 1" if base_step else ""
            diag = ", ".join(f"{k} {values['metrics'][k]:.3f}" for k in DIAGNOSTICS if k in values["metrics"])
            print(f"{stage}: {len(values['steps'])} epochs, step median over epochs 2+ {step * 1000:.0f} ms "
                  f"(range {min(later) * 1000:.0f}-{max(later) * 1000:.0f}){ratio}"
                  + (f"; last epoch: {diag}" if diag else ""))
        for line in log["evaluation"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
