"""Every gsparse method on an image-classification task, through the generic comparison harness:

    python scripts/compare_cnn.py --out runs/compare_cnn          # digits, small ResNet, 90 / 95 %

Cells: ``OUT/digits/<method>-s<sparsity>-seed<seed>/`` (resumable), then ``results.md`` / ``.csv`` /
``.json`` and the plots in ``OUT/digits/``. Every conv and linear weight is sparse (uniform
density); test accuracy at the epoch with the best validation accuracy.
"""
from __future__ import annotations

import argparse
import sys

from gsparse.training.compare import GridSettings, TaskStudy, run_comparison

METHODS = ["dense", "static", "set", "rigl", "dst_ee", "mest", "snip", "optg", "acdc", "autosparse", "topkast_ga",
           "gmp", "admm"]


def digits_study() -> TaskStudy:
    from gsparse.tasks.vision.task import VisionTask
    from gsparse.tasks.vision.train import VisionConfig

    return TaskStudy("digits", lambda seed: VisionTask(VisionConfig(dataset="digits", seed=seed)),
                     sparse_params=None, metric="test_accuracy", secondary_metric="val_accuracy",
                     options={"dataset": "digits", "model": "small_resnet"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare_cnn", description=__doc__)
    parser.add_argument("--out", default="runs/compare_cnn")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only-table", action="store_true")
    args = parser.parse_args(argv)
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (ADMM's three phases)")
    third = args.epochs // 3
    settings = GridSettings(methods=args.methods, sparsities=args.sparsities, seeds=args.seeds,
                            dst_epochs=args.epochs, dense_epochs=args.epochs, gmp_epochs=args.epochs,
                            admm_epochs=[third, third, args.epochs - 2 * third], update_interval=10,
                            explore_c=[], out=args.out)
    run_comparison(settings, digits_study(), only_table=args.only_table, quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
