"""Paper vs strong recipe at a short budget, and which of two suspects explains a gap: the sampler or the warm-up.

Issue 20 item 9: on one user's data the strong recipe's baseline beat the paper recipe's at 30 epochs
but not at 12 (one seed). Suspects: the P x K sampler (before e4a0db0 it redrew K images of an
identity each time, showing ~58 % of the images per epoch) and the 1-epoch warm-up at a short budget.
This script trains stage 1 for ``--epochs`` on a built-in-style dataset the project never trained on
(``--ids`` identities, half for training, generated with ``--data-seed``; a new user's path:
``fit --data DIR``) under four settings, seed by seed:

- ``paper``: ``--recipe paper``;
- ``strong``: ``--recipe strong`` (BoT's sampler, 1-epoch warm-up), what the demo preset trains;
- ``strong-no-warmup``: ``--recipe strong --warmup-epochs 0``;
- ``strong-old-sampler``: ``--recipe strong`` with ``aaa_keras/data/sampler.py`` as it was at
  ``--old-sampler-commit`` (db7a2ae), in a temporary git worktree of this repository.

Then every pair that answers a question is compared per query (the ablate grid's crossed bootstrap
over seeds and queries, ``benchmarks/compare_runs.py``). Finished runs (a ``done`` file in the run
directory) are reused, so an interrupted call resumes.

    python benchmarks/short_budget_recipes.py --out /tmp/short-budget            # 3 seeds, 12 epochs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from common import REPO_ROOT, machine_description  # noqa: E402  (puts the repo on sys.path)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SETTINGS = {
    "paper": ["--recipe", "paper"],
    "strong": ["--recipe", "strong"],
    "strong-no-warmup": ["--recipe", "strong", "--warmup-epochs", "0"],
    "strong-old-sampler": ["--recipe", "strong"],
}
COMPARISONS = (  # (A, B, the question B - A answers)
    ("paper", "strong", "strong recipe > paper recipe"),
    ("strong-old-sampler", "strong", "BoT's sampler > the old sampler (strong recipe)"),
    ("strong-no-warmup", "strong", "1-epoch warm-up > none (strong recipe)"),
)


def dataset(ids: int, seed: int) -> str:
    from aaa_keras.data.synth import ensure_synthetic

    return ensure_synthetic(num_ids=ids, num_test_ids=ids // 2, queries_per_camera=3, seed=seed)


def old_sampler_tree(commit: str, where: str) -> str:
    """A detached worktree of HEAD with the sampler file of ``commit``."""
    tree = os.path.join(where, "old-sampler")
    if not os.path.isdir(tree):
        subprocess.run(["git", "-C", REPO_ROOT, "worktree", "add", "--detach", "-q", tree, "HEAD"], check=True)
        old = subprocess.run(["git", "-C", REPO_ROOT, "show", f"{commit}:aaa_keras/data/sampler.py"],
                             check=True, capture_output=True, text=True).stdout
        with open(os.path.join(tree, "aaa_keras", "data", "sampler.py"), "w") as handle:
            handle.write(old)
    return tree


def train(setting: str, seed: int, args, data: str, tree: str) -> str:
    run_dir = os.path.join(args.out, f"{setting}_s{seed}")
    marker = os.path.join(run_dir, "done")
    what = f"epochs {args.epochs}, data {data}\n"
    if os.path.exists(marker):
        if open(marker).read() != what:
            sys.exit(f"{run_dir}: trained with other settings ({open(marker).read().strip()}); use another --out")
        return run_dir
    command = [sys.executable, "cli.py", "fit", "--stage", "baseline", "--epochs", str(args.epochs),
               "--data", data, "--run-dir", run_dir, "--seed", str(seed), *SETTINGS[setting]]
    print(f"  {setting}, seed {seed}: {' '.join(command[1:])}", flush=True)
    with open(run_dir + ".log", "w") as log:
        subprocess.run(command, cwd=tree if setting == "strong-old-sampler" else REPO_ROOT,
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(marker, "w") as handle:
        handle.write(what)
    return run_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the run directories go")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--ids", type=int, default=120, help="identities, half of them for training")
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--old-sampler-commit", default="db7a2ae")
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)  # the old-sampler runs start in another directory
    if subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
                      check=True, capture_output=True, text=True).stdout.strip():
        sys.exit("the working tree has uncommitted changes: the old-sampler runs use committed HEAD, the "
                 "others the working tree; commit or stash first")
    os.makedirs(args.out, exist_ok=True)
    data = dataset(args.ids, args.data_seed)
    runs = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            tree = old_sampler_tree(args.old_sampler_commit, scratch)
            for seed in range(args.seeds):
                for setting in SETTINGS:
                    runs[setting].append(train(setting, seed, args, data, tree))
        finally:
            subprocess.run(["git", "-C", REPO_ROOT, "worktree", "remove", "--force",
                            os.path.join(scratch, "old-sampler")], check=False, capture_output=True)
            subprocess.run(["git", "-C", REPO_ROOT, "worktree", "prune"], check=False)

    from compare_runs import difference_cell, per_query

    results = {name: per_query(dirs, "baseline") for name, dirs in runs.items()}
    print(f"\nMachine: {machine_description()}")
    print(f"Data: {data} ({args.ids} identities, half for training); stage 1, {args.epochs} epochs, "
          f"demo preset (tiny_resnet 128x64); seeds 0-{args.seeds - 1}; Euclidean.\n")
    print("| setting | Rank-1 per seed | mAP per seed | mAP mean |")
    print("|---|---|---|---|")
    for name, result in results.items():
        per_seed = {m: result[m].mean(axis=1) for m in ("rank1", "mAP")}
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in per_seed['rank1'])} | "
              f"{' / '.join(f'{v:.1f}' for v in per_seed['mAP'])} | {per_seed['mAP'].mean():.1f} |")
    print("\n| question (B - A) | Δ Rank-1 [95 % CI] | Δ mAP [95 % CI] |")
    print("|---|---|---|")
    for a, b, question in COMPARISONS:
        cells = [difference_cell(results[b][measure], results[a][measure]) for measure in ("rank1", "mAP")]
        print(f"| {question} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
