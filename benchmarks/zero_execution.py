"""Sparse execution under DeepSpeed: optimizer steps per second of a wide MLP, execution dense vs
sparse, at a ZeRO stage (run under a launcher; rank 0 prints one JSON object).

    deepspeed --num_accelerators 2 benchmarks/zero_execution.py --stage 3
    torchrun --nproc_per_node 2 benchmarks/zero_execution.py --stage 2 --quick

Both engines live in the process and step in turn on the same batches (paired rounds); the sparse
layers are the MLP's 2048x2048 hidden layers at 95% (RigL, an update every 50 steps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

import gsparse.deepspeed as gds
from gsparse.training import shutdown_distributed


def build(stage: int, execution: str, width: int, sparsity: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                torch.nn.ReLU(), torch.nn.Linear(width, width), torch.nn.ReLU(),
                                torch.nn.Linear(width, 10))
    recipe = {"method": "rigl", "sparsity": sparsity, "execution": execution,
              "params": {"include": ["2.weight", "4.weight"]}, "schedule": {"update_interval": 50}}
    config = {"train_micro_batch_size_per_gpu": 256, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9, "gradient_clipping": 0.0}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    engine, *_, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config, recipe=recipe)
    return engine, sparsifier


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.width, args.rounds = 512, 4
    gds.ensure_process_group()
    engines = {mode: build(args.stage, mode, args.width, args.sparsity) for mode in ("dense", "sparse")}
    generator = torch.Generator().manual_seed(dist.get_rank())
    times = {mode: [] for mode in engines}
    for round_index in range(args.rounds + 2):
        inputs = torch.randn(256, 256, generator=generator)
        targets = torch.randint(0, 10, (256,), generator=generator)
        order = list(engines) if round_index % 2 == 0 else list(reversed(engines))
        for mode in order:
            engine, _ = engines[mode]
            dist.barrier()
            started = time.perf_counter()
            engine.backward(torch.nn.functional.cross_entropy(engine(inputs), targets))
            engine.step()
            dist.barrier()
            if round_index >= 2:  # warm-up rounds
                times[mode].append((time.perf_counter() - started) * 1e3)
    report = {name: entry["mode"] for name, entry in engines["sparse"][1].execution_report().items()}
    if dist.get_rank() == 0:
        dense_ms, sparse_ms = statistics.median(times["dense"]), statistics.median(times["sparse"])
        print(json.dumps({"benchmark": "zero_execution", "stage": args.stage, "world_size": dist.get_world_size(),
                          "width": args.width, "sparsity": args.sparsity, "rounds": args.rounds,
                          "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                          "dense_step_ms": round(dense_ms, 2), "sparse_step_ms": round(sparse_ms, 2),
                          "speedup": round(dense_ms / sparse_ms, 3), "execution": report}))
    shutdown_distributed()


if __name__ == "__main__":
    main()
