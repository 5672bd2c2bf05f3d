"""Images/s of CNNs under DeepSpeed with and without gsparse, ZeRO-2 and ZeRO-3, 2 CPU ranks.

Run:  python benchmarks/cnn_overhead.py        (launches itself with torchrun; prints one JSON object)

Models: the small ResNet and the CIFAR ResNet-50 on synthetic 32x32 RGB images (speed only), SGD
momentum 0.9, fp32; gsparse runs DST-EE at 90% (ERK) between mask updates. Three engines per model
and stage - plain DeepSpeed, a second plain one (the noise floor), gsparse - are stepped in turn,
the order rotated every round; overheads are medians of per-round ratios to the plain engine, and
the time inside gsparse's step hooks is measured directly. BENCH_ROUNDS sets the rounds (default 12).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

from zero_overhead import _time_hooks  # the same timing of gsparse's step hooks

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "12"))
BATCH = {"small_resnet": 64, "cifar_resnet50": 16}  # per rank
MODES = ("plain", "plain_again", "gsparse")


def _build(mode: str, model_name: str, stage: int):
    import deepspeed

    import gsparse.deepspeed as gds
    from gsparse.tasks.vision.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, 10, in_channels=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = {"train_micro_batch_size_per_gpu": BATCH[model_name], "zero_optimization": {"stage": stage},
              "gradient_clipping": 0.0, "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    if mode.startswith("plain"):
        return deepspeed.initialize(model=model, optimizer=optimizer, config=config)[0], None
    recipe = {"method": "dst_ee", "sparsity": 0.9, "distribution": "erk",
              "schedule": {"update_interval": 10**9, "drop_fraction": 0.3}}
    engine, *_, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config, recipe=recipe)
    return engine, sparsifier


def measure(model_name: str, stage: int) -> dict:
    import torch.distributed as dist

    engines, hooks = {}, None
    for mode in MODES:
        engines[mode], sparsifier = _build(mode, model_name, stage)
        if sparsifier is not None:
            hooks = _time_hooks(sparsifier.engine)
    batch = BATCH[model_name]
    inputs = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    times = {mode: [] for mode in MODES}
    warmup = 2
    for round_index in range(ROUNDS + warmup):
        if round_index == warmup:
            hooks.clear()
        shift = round_index % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            engine = engines[mode]
            dist.barrier()
            start = time.perf_counter()
            engine.backward(torch.nn.functional.cross_entropy(engine(inputs), targets))
            engine.step()
            if round_index >= warmup:
                times[mode].append(time.perf_counter() - start)
    plain = times["plain"]
    ratios = {mode: statistics.median(t / p - 1 for t, p in zip(times[mode], plain)) for mode in MODES[1:]}
    world = dist.get_world_size()
    return {"images_per_second": {mode: world * batch / statistics.median(values) for mode, values in times.items()},
            "wall_clock_overhead_median": ratios,
            "in_hooks_fraction_of_plain_step": sum(hooks) / ROUNDS / statistics.median(plain),
            "batch_per_rank": batch, "rounds": ROUNDS}


def main():
    if "RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
        sys.exit(subprocess.call(command, env=dict(os.environ, OMP_NUM_THREADS="1")))
    import deepspeed
    import torch.distributed as dist

    from gsparse.training import shutdown_distributed

    deepspeed.init_distributed(dist_backend="gloo")
    report = {"world_size": dist.get_world_size(), "torch_threads": torch.get_num_threads()}
    for model_name in ("small_resnet", "cifar_resnet50"):
        for stage in (2, 3):
            report[f"{model_name}/zero{stage}"] = measure(model_name, stage)
    if dist.get_rank() == 0:
        print(json.dumps(report, indent=1))
    shutdown_distributed()


if __name__ == "__main__":
    main()
