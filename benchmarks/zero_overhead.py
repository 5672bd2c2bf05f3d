"""Step time of DeepSpeed with and without gsparse, ZeRO-2 and ZeRO-3, and the cost of a mask update.

Run:  python benchmarks/zero_overhead.py            (launches itself on 2 CPU ranks with torchrun)
Prints one JSON object. Model: an MLP of ~8.4M parameters (1024-2048-2048-1024), fp32, AdamW.

BENCH_OPTIMIZER picks the optimizer: ``adamw_fused`` (default; torch's fused CPU kernel),
``adamw_foreach`` (torch's default implementation) or ``sgd`` (momentum 0.9). With
``adamw_foreach`` a sparse model's step is slower *inside torch*: its ``sqrt`` of Adam's second
moments is several times slower per element on exact zeros than on other values in the CPU
build (MKL VML), and a sparse model's inactive weights have zero moments. The JSON reports that
``sqrt`` cost too, so it can be told apart from gsparse's own (``in_hooks``).
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
STEPS = int(os.environ.get("BENCH_STEPS", "60"))
OPTIMIZER = os.environ.get("BENCH_OPTIMIZER", "adamw_fused")
OPTIMIZERS = {
    "adamw_fused": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True),
    "adamw_foreach": lambda params: torch.optim.AdamW(params, lr=1e-3, foreach=True),
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9),
}


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


MODES = ("plain", "plain_again", "gsparse", "gsparse_always_mask", "update_every_step")


def _build(mode: str, config: dict):
    import deepspeed

    import gsparse.deepspeed as gds

    model = make_model()
    optimizer = OPTIMIZERS[OPTIMIZER](model.parameters())
    if mode.startswith("plain"):
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return engine, None
    recipe = {"method": "dst_ee", "sparsity": 0.9, "distribution": "erk",
              "mask_weights_after_step": "always" if mode == "gsparse_always_mask" else "auto",
              "schedule": {"update_interval": 1 if mode == "update_every_step" else 10**9, "drop_fraction": 0.3}}
    engine, *_, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config, recipe=recipe)
    return engine, sparsifier


def _record_collectives(communicator) -> list[torch.Tensor]:
    """Wrap gsparse's all-reduce to keep a copy of every tensor it sums."""
    reduced: list[torch.Tensor] = []
    original = communicator.all_reduce_sum

    def recording(tensor):
        reduced.append(tensor.clone())
        return original(tensor)

    communicator.all_reduce_sum = recording
    return reduced


def _replay_seconds(tensors: list[torch.Tensor]) -> float:
    """Time of the given all-reduces alone, started together on all ranks (the time gsparse's
    collectives take inside an update also holds the wait for the slower rank's local work)."""
    import torch.distributed as dist

    times = []
    for _ in range(21):
        dist.barrier()
        start = time.perf_counter()
        for tensor in tensors:
            dist.all_reduce(tensor.clone())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _dense_scores_all_reduce_seconds(num_params: int) -> float:
    """What DDP-style DST libraries communicate per update: two dense fp32 score tensors."""
    import torch.distributed as dist

    scores = [torch.rand(num_params), torch.rand(num_params)]
    times = []
    for _ in range(5):
        dist.barrier()
        start = time.perf_counter()
        for tensor in scores:
            dist.all_reduce(tensor)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _quartiles(values: list[float]) -> list[float]:
    low, median, high = statistics.quantiles(values, n=4)
    return [low, median, high]


def measure(stage: int) -> dict:
    """Five engines side by side, stepped in turn with the order rotated every round, so that the
    drift of this shared machine's speed hits all alike; overheads are medians of per-round ratios
    to the plain engine, and a second plain engine shows the noise floor."""
    config = {"train_micro_batch_size_per_gpu": BATCH, "zero_optimization": {"stage": stage},
              "gradient_clipping": 0.0, "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    engines, sparsifiers, hook_seconds = {}, {}, {}
    for mode in MODES:
        engines[mode], sparsifier = _build(mode, config)
        if sparsifier is not None:
            sparsifiers[mode] = sparsifier
            hook_seconds[mode] = _time_hooks(sparsifier.engine)
    inputs, targets = torch.randn(BATCH, HIDDEN[0]), torch.randn(BATCH, HIDDEN[-1])
    times = {mode: [] for mode in MODES}
    communicator = sparsifiers["update_every_step"].backend.communicator
    reduced = _record_collectives(communicator)
    warmup = 3
    for round_index in range(STEPS + warmup):
        if round_index == warmup:
            bytes_before = communicator.bytes_reduced
            reduced.clear()
            for spent in hook_seconds.values():
                spent.clear()
        shift = round_index % len(MODES)
        for mode in MODES[shift:] + MODES[:shift]:
            elapsed = one_step(engines[mode], inputs, targets)
            if round_index >= warmup:
                times[mode].append(elapsed)
    plain = times["plain"]
    ratios = {mode: [t / p - 1 for t, p in zip(times[mode], plain)] for mode in MODES if mode != "plain"}
    in_hooks = {mode: sum(spent) / STEPS for mode, spent in hook_seconds.items()}
    plain_median = statistics.median(plain)
    layers = sparsifiers["gsparse"].engine.layers
    return {
        "step_seconds_median": {mode: statistics.median(values) for mode, values in times.items()},
        "wall_clock_overhead_quartiles": {mode: _quartiles(values) for mode, values in ratios.items()},
        "in_hooks_seconds_per_step": in_hooks,
        "overhead_non_update_in_hooks": in_hooks["gsparse"] / plain_median,
        "overhead_non_update_in_hooks_always_mask": in_hooks["gsparse_always_mask"] / plain_median,
        "update_extra_seconds": in_hooks["update_every_step"] - in_hooks["gsparse"],
        "updates_amortised_dt100": (in_hooks["update_every_step"] - in_hooks["gsparse"]) / (100 * plain_median),
        "overhead_amortised_dt100_in_hooks": (99 * in_hooks["gsparse"] + in_hooks["update_every_step"])
                                             / (100 * plain_median),
        "bytes_per_update": (communicator.bytes_reduced - bytes_before) / STEPS,
        "update_all_reduces": len(reduced) // STEPS,
        "update_communication_seconds": _replay_seconds(reduced[-(len(reduced) // STEPS):]),
        "four_histogram_all_reduces_seconds": _replay_seconds(
            [torch.zeros(len(layers), 256, dtype=torch.int64)] * 4),
        "dense_scores_all_reduce_seconds": _dense_scores_all_reduce_seconds(
            sum(p.numel() for p in make_model().parameters())),
        "sparse_state_bytes_per_rank": sum(l.mask.numel() * l.mask.element_size()
                                           + l.counter.numel() * l.counter.element_size() for l in layers),
        "num_params": sum(p.numel() for p in make_model().parameters()),
        "rounds": STEPS,
    }


def _sqrt_cost() -> dict:
    """torch.sqrt over 4.2M floats: random values vs 90% exact zeros (Adam's denominator)."""
    values = torch.rand(4_200_000) + 0.5
    with_zeros = values * (torch.rand(values.numel()) > 0.9)
    result = {}
    for name, tensor in (("nonzero", values), ("90pct_zero", with_zeros)):
        times = []
        for _ in range(10):
            start = time.perf_counter()
            torch.sqrt(tensor)
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times) * 1e3
    return result


def main():
    if "RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
        sys.exit(subprocess.call(command, env=dict(os.environ, OMP_NUM_THREADS="1")))
    import deepspeed
    import torch.distributed as dist

    deepspeed.init_distributed(dist_backend="gloo")
    report = {"world_size": dist.get_world_size(), "torch_threads": torch.get_num_threads(), "optimizer": OPTIMIZER,
              "sqrt_ms_per_4m_elements": _sqrt_cost(),
              "zero2": measure(2), "zero3": measure(3)}
    if dist.get_rank() == 0:
        print(json.dumps(report, indent=1))
    from gsparse.training import shutdown_distributed

    shutdown_distributed()


if __name__ == "__main__":
    main()
