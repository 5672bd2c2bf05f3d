"""Run by tests/test_training.py under torchrun (2 ranks): the toy task through the runner at
ZeRO-2 and ZeRO-3, 2 micro-batches per rank, in one launch."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.* modules

from test_training import RIGL, ToyTask  # noqa: E402

from gsparse.training import RunConfig, train  # noqa: E402
from gsparse.training.runner import shutdown_distributed  # noqa: E402

out = Path(sys.argv[1])
for stage in (2, 3):
    ds_config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2, "steps_per_print": 10 ** 6,
                 "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": stage}}
    train(ToyTask(batch_size=32), RunConfig(epochs=2, recipe=RIGL, deepspeed_config=ds_config, progress=False,
                                            run_dir=str(out / f"zero{stage}"), log=lambda line: None))
# bf16 at ZeRO-2, with DeepSpeed's own CSV monitor enabled: the epoch rows go through it too
ds_config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2, "steps_per_print": 10 ** 6,
             "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
             "csv_monitor": {"enabled": True, "output_path": str(out / "monitor"), "job_name": "toy"}}
train(ToyTask(batch_size=32), RunConfig(epochs=2, recipe=RIGL, deepspeed_config=ds_config, progress=False,
                                        run_dir=str(out / "bf16"), log=lambda line: None))
shutdown_distributed()
