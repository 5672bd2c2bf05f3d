"""A method that fails on one rank mid-training, and a worker that trains with it (tests/test_rank_failure.py).

``failing_set`` is SET whose ``mask_change`` raises ``RuntimeError("injected failure on rank R at step
N")`` on rank ``fail_rank`` only, at step ``fail_step`` (or, with ``hang``, sleeps there for an hour
without exiting), while the other ranks go on into the update's collectives. Run under a launcher::

    deepspeed --num_accelerators 2 tests/distributed/failing_method.py --run-dir DIR [--fail-step 3] [--hang]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.* modules
from gsparse.methods import register_method  # noqa: E402
from gsparse.methods.set import SET  # noqa: E402
from gsparse.options import Option, integer  # noqa: E402


class FailingSET(SET):
    """SET that raises at ``fail_step`` on rank ``fail_rank`` (and nowhere else), having written the
    time of the failure to ``stamp_file`` if set."""

    options = {"fail_step": Option(3, integer(1), "the step whose mask update raises"),
               "fail_rank": Option(1, integer(0), "the rank that raises"),
               "hang": Option(0, integer(0), "non-zero: hang (sleep) instead of raising")}
    stamp_file: Path | None = None

    def mask_change(self, step: int):
        rank = dist.get_rank() if dist.is_initialized() else 0
        if step == self.args.fail_step and rank == self.args.fail_rank:
            if self.stamp_file is not None:
                self.stamp_file.write_text(repr(time.time()))
            if self.args.hang:
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {rank} at step {step}")
        return super().mask_change(step)


register_method("failing_set", FailingSET, replace=True)

# an update every step, so the other ranks are inside the update's collectives when the failing rank raises
RECIPE = {"method": "failing_set", "sparsity": 0.75, "distribution": "uniform",
          "params": {"include": ["0.weight", "3.weight"]},
          "schedule": {"update_interval": 1, "drop_fraction": 0.3, "last_update_step": 20}}
ZERO2 = {"gradient_accumulation_steps": 1, "steps_per_print": 10 ** 6, "zero_allow_untested_optimizer": True,
         "zero_optimization": {"stage": 2}}


def main() -> None:
    from gsparse.training import RunConfig, shutdown_distributed, train
    from tests.test_training import ToyTask

    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--fail-step", type=int, default=3)
    parser.add_argument("--hang", action="store_true")
    args, _ = parser.parse_known_args()  # the deepspeed launcher adds --local_rank
    FailingSET.stamp_file = Path(args.run_dir) / "failed_at"
    recipe = {**RECIPE, "method_args": {"fail_step": args.fail_step, "hang": int(args.hang)}}
    train(ToyTask(batch_size=32), RunConfig(epochs=2, recipe=recipe, deepspeed_config=ZERO2, run_dir=args.run_dir,
                                            progress=False, log=lambda line: None))
    shutdown_distributed()


if __name__ == "__main__":
    main()
