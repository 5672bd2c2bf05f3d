"""How gsparse's communication and memory scale: bytes all-reduced per mask update against model
size (must stay flat), and per-rank memory of the sparse state against world size (must fall as
1 / world_size). ZeRO-2 and ZeRO-3, DST-EE, CPU ranks.

Run:  python benchmarks/sparse_state_scaling.py     (launches itself at 1, 2 and 4 ranks)
Prints one JSON object.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

WIDTHS = (128, 256, 512, 1024)
WORLD_SIZES = (1, 2, 4)


def make_model(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.ReLU(), torch.nn.Linear(2 * width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))


def measure() -> dict:
    import torch.distributed as dist

    import gsparse.deepspeed as gds

    rows = []
    for stage in (2, 3):
        for width in WIDTHS:
            model = make_model(width)
            config = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": stage},
                      "steps_per_print": 10**9}
            recipe = {"method": "dst_ee", "sparsity": 0.9, "schedule": {"update_interval": 1, "drop_fraction": 0.3}}
            engine, *_, sparsifier = gds.initialize(model=model, config=config, recipe=recipe,
                                                    optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
            communicator = sparsifier.backend.communicator
            inputs, targets = torch.randn(8, width), torch.randint(0, 10, (8,))
            before = communicator.bytes_reduced
            for _ in range(2):
                engine.backward(torch.nn.functional.cross_entropy(engine(inputs), targets))
                engine.step()
            state_bytes = torch.tensor([sum(l.mask.numel() * l.mask.element_size() + l.counter.numel()
                                            * l.counter.element_size() for l in sparsifier.engine.layers)])
            dist.all_reduce(state_bytes, op=dist.ReduceOp.MAX)
            rows.append({"stage": stage, "world_size": dist.get_world_size(), "width": width,
                         "sparse_params": sum(spec.numel for spec in sparsifier.specs),
                         "bytes_per_update": (communicator.bytes_reduced - before) / 2,
                         "max_sparse_state_bytes_per_rank": int(state_bytes)})
            del engine, sparsifier
    return rows


def main():
    if "RANK" in os.environ:
        import deepspeed
        import torch.distributed as dist

        deepspeed.init_distributed(dist_backend="gloo")
        rows = measure()
        if dist.get_rank() == 0:
            with open(os.environ["BENCH_OUT"], "w") as output:
                json.dump(rows, output)
        from gsparse.training import shutdown_distributed

        shutdown_distributed()
        return
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for world_size in WORLD_SIZES:
            out = os.path.join(workdir, f"{world_size}.json")
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
                       __file__]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, OMP_NUM_THREADS="1", BENCH_OUT=out))
            with open(out) as results:
                rows += json.load(results)
    print(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
