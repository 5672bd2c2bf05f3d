"""Step time of DeepSpeed with and without gsparse, ZeRO-2 and ZeRO-3, and the cost of a mask update.

Run:  python benchmarks/zero_overhead.py            (launches itself on 2 CPU ranks with torchrun)
Prints one JSON object. Model: an MLP of ~8.4M parameters (1024-2048-2048-1024), AdamW, fp32.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import torch

HIDDEN = (1024, 2048, 2048, 1024)
BATCH = 64
STEPS = int(os.environ.get("BENCH_STEPS", "30"))


def make_model():
    torch.manual_seed(0)
    layers = []
    for fan_in, fan_out in zip(HIDDEN[:-1], HIDDEN[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def one_step(engine, inputs, targets) -> float:
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(engine(inputs), targets)
    engine.backward(loss)
    engine.step()
    return time.perf_counter() - start


def _time_hooks(engine) -> list[float]:
    """Wrap the engine's per-step entry points to add up the time spent inside gsparse."""
    spent: list[float] = []
    for name in ("start_step", "before_layers_step", "after_layers_step", "finish_step"):
        original = getattr(engine, name)

        def timed(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        setattr(engine, name, timed)
    return spent


def measure(stage: int) -> dict:
    """Three engines side by side (plain, gsparse between updates, gsparse updating every step),
    stepped in turn so that drift of the machine's speed hits all three alike."""
    import deepspeed

    import gsparse.deepspeed as gds

    config = {"train_micro_batch_size_per_gpu": BATCH, "zero_optimization": {"stage": stage},
              "gradient_clipping": 0.0, "steps_per_print": 10**9}
    engines, sparsifiers, hook_seconds = {}, {}, {}
    for mode in ("plain", "gsparse", "update_every_step"):
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if mode == "plain":
            engines[mode], *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
            continue
        recipe = {"method": "dst_ee", "sparsity": 0.9, "distribution": "erk",
                  "schedule": {"update_interval": 1 if mode == "update_every_step" else 10**9, "drop_fraction": 0.3}}
        engines[mode], *_, sparsifiers[mode] = gds.initialize(model=model, optimizer=optimizer, config=config,
                                                              recipe=recipe)
        hook_seconds[mode] = _time_hooks(sparsifiers[mode].engine)
    inputs, targets = torch.randn(BATCH, HIDDEN[0]), torch.randn(BATCH, HIDDEN[-1])
    times = {mode: [] for mode in engines}
    communicator = sparsifiers["update_every_step"].backend.communicator
    for step in range(STEPS + 3):
        if step == 3:  # after warm-up
            bytes_before = communicator.bytes_reduced
            for spent in hook_seconds.values():
                spent.clear()
        for mode, engine in engines.items():
            elapsed = one_step(engine, inputs, targets)
            if step >= 3:
                times[mode].append(elapsed)
    result = {mode: statistics.median(values) for mode, values in times.items()}
    plain, sparse, update = result["plain"], result["gsparse"], result["update_every_step"]
    in_hooks = sum(hook_seconds["gsparse"]) / STEPS
    in_update_hooks = sum(hook_seconds["update_every_step"]) / STEPS
    layers = sparsifiers["gsparse"].engine.layers
    result.update(
        gsparse_seconds_per_step_in_hooks=in_hooks,
        update_seconds_per_step_in_hooks=in_update_hooks,
        overhead_non_update=sparse / plain - 1,
        overhead_non_update_in_hooks=in_hooks / plain,
        update_extra_seconds=in_update_hooks - in_hooks,
        overhead_amortised_dt100=(99 * in_hooks + in_update_hooks) / (100 * plain),
        updates_amortised_dt100=(in_update_hooks - in_hooks) / (100 * plain),
        bytes_per_update=(communicator.bytes_reduced - bytes_before) / STEPS,
        sparse_state_bytes_per_rank=sum(l.mask.numel() * l.mask.element_size()
                                        + l.counter.numel() * l.counter.element_size() for l in layers),
        num_params=sum(p.numel() for p in make_model().parameters()),
    )
    return result


def main():
    if "RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
        sys.exit(subprocess.call(command, env=dict(os.environ, OMP_NUM_THREADS="1")))
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    report = {"world_size": dist.get_world_size(), "torch_threads": torch.get_num_threads(),
              "zero2": measure(2), "zero3": measure(3)}
    if dist.get_rank() == 0:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
