"""A worker that trains the toy task with RigL at ZeRO-2 and can resume (tests/test_kill_resume.py).

Run under a launcher::

    deepspeed --num_accelerators 2 tests/distributed/resumable_worker.py --run-dir DIR [--epochs 3]
        [--resume] [--step-seconds S]

``--step-seconds`` sleeps before each training step (it changes no result): it keeps a run alive
long enough for a test to kill one of its ranks mid-run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.* modules

RECIPE = {"method": "rigl", "sparsity": 0.75, "distribution": "uniform",
          "params": {"include": ["0.weight", "3.weight"]},
          "schedule": {"update_interval": 2, "drop_fraction": 0.3, "last_update_step": 18}}


def main() -> None:
    from gsparse.training import RunConfig, shutdown_distributed, train
    from tests.distributed.failing_method import ZERO2
    from tests.test_training import ToyTask

    class SlowToyTask(ToyTask):
        """ToyTask that waits ``step_seconds`` before each batch."""

        def __init__(self, step_seconds: float, **options):
            super().__init__(**options)
            self.step_seconds = step_seconds

        def train_batches(self, epoch, context):
            for batch in super().train_batches(epoch, context):
                time.sleep(self.step_seconds)
                yield batch

    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args, _ = parser.parse_known_args()  # the deepspeed launcher adds --local_rank
    train(SlowToyTask(args.step_seconds, batch_size=32),
          RunConfig(epochs=args.epochs, recipe=RECIPE, deepspeed_config=ZERO2, run_dir=args.run_dir,
                    resume=args.resume, progress=False, log=lambda line: None))
    shutdown_distributed()


if __name__ == "__main__":
    main()
