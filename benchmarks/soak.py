"""Soak test: a long plain-PyTorch run with frequent mask updates (default 20,000 steps, an update
every 10), checking after every step that the sparsity is exact and every 1,000 steps that memory
stays flat.

The model is a 3-layer MLP (128 -> 256 -> 256 -> 16, 102,400 sparse weights) trained with AdamW
under ``gsparse.Sparsifier`` on synthetic classification batches (labels from a fixed random
teacher). The data are synthetic on purpose: a soak measures sparsity and memory over many
updates, not accuracy.

Exact sparsity, checked after every step and every layer: the mask holds exactly the engine's
active count (for a fixed-budget method such as DST-EE also the distribution's target count),
inactive weights are exactly 0 (methods that enforce the mask) and no counter exceeds
1 + the number of updates. Active weights that happen to be exactly 0 (a weight grown at 0 whose
gradient was 0, e.g. from a dead ReLU unit) are counted, not failed.

Memory every 1,000 steps: RSS (``VmRSS`` from ``/proc/self/status``) and the bytes of all live
torch tensors (distinct storages found by ``gc``; no tracemalloc).

Run:  OMP_NUM_THREADS=1 python benchmarks/soak.py [--steps 20000] [--update-interval 10]
      [--method dst_ee] [--distribution erk] [--json-out soak.json]
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import warnings

import torch

import gsparse

RECORD_EVERY = 1000
REPORTED_STEPS = (1000, 5000, 10000, 20000)
BATCH_SIZE = 64
IN_FEATURES, HIDDEN, CLASSES = 128, 256, 16


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(IN_FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, HIDDEN),
                               torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))


def soak_recipe(method: str, distribution: str, update_interval: int, steps: int) -> dict:
    """90% sparsity, updates every ``update_interval`` steps until the end of the run."""
    schedule = {"update_interval": update_interval, "drop_fraction": 0.3}
    if gsparse.METHODS[method].needs_last_update_step:  # e.g. GMP's ramp needs an end: the run's last step
        schedule["last_update_step"] = steps
    return {"method": method, "sparsity": 0.9, "distribution": distribution, "schedule": schedule, "seed": 0}


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def live_tensor_mib() -> float:
    """Bytes of the distinct storages of all tensors reachable by ``gc`` (parameters, gradients,
    optimizer and sparse state, anything leaked)."""
    storages = {}
    with warnings.catch_warnings():  # isinstance() touches deprecated torch module attributes
        warnings.simplefilter("ignore", FutureWarning)
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20


def sparsity_violations(sparsifier: gsparse.Sparsifier, fixed_budget: bool) -> tuple[list[str], int]:
    """What breaks exact sparsity now (empty if nothing), and how many active weights are exactly 0."""
    engine = sparsifier.engine
    problems, zero_active = [], 0
    for param, layer in zip(sparsifier.params, engine.layers):
        name, mask, weight = layer.spec.name, layer.mask, param.detach().view(-1)
        in_mask = int(torch.count_nonzero(mask))
        if in_mask != layer.active:
            problems.append(f"{name}: mask holds {in_mask}, engine says {layer.active}")
        if fixed_budget and layer.active != layer.spec.active_count:
            problems.append(f"{name}: {layer.active} active, target {layer.spec.active_count}")
        if engine.enforces_mask:
            inactive_nonzero = int(torch.count_nonzero(weight.masked_select(~mask)))
            if inactive_nonzero:
                problems.append(f"{name}: {inactive_nonzero} inactive weights are not 0")
            zero_active += in_mask - int(torch.count_nonzero(weight))  # nonzeros all lie inside the mask
        if int(layer.counter.max()) > 1 + engine.num_updates:
            problems.append(f"{name}: counter above 1 + {engine.num_updates} updates")
    return problems, zero_active


def soak(steps: int, update_interval: int, method: str, distribution: str) -> dict:
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sparsifier = gsparse.Sparsifier(model, optimizer, soak_recipe(method, distribution, update_interval, steps),
                                    total_steps=steps)
    fixed_budget = method in ("dst_ee", "rigl", "set", "static", "mest")
    teacher = torch.randn(IN_FEATURES, CLASSES, generator=torch.Generator().manual_seed(1))
    data = torch.Generator().manual_seed(2)
    exact, first_violation, steps_with_zero_active, most_zero_active, memory = True, None, 0, 0, {}
    start = time.perf_counter()
    for step in range(1, steps + 1):
        inputs = torch.randn(BATCH_SIZE, IN_FEATURES, generator=data)
        targets = (inputs @ teacher).argmax(1)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        problems, zero_active = sparsity_violations(sparsifier, fixed_budget)
        steps_with_zero_active += zero_active > 0
        most_zero_active = max(most_zero_active, zero_active)
        if problems and exact:
            exact, first_violation = False, {"step": step, "problems": problems}
        if step % RECORD_EVERY == 0:
            memory[step] = {"rss_mib": round(rss_mib(), 1), "live_tensor_mib": round(live_tensor_mib(), 3)}
    seconds = time.perf_counter() - start
    counters = list(sparsifier.counters.values())
    metrics = sparsifier.metrics()
    recorded = sorted(memory)
    return {
        "method": method, "distribution": distribution, "sparsity": 0.9, "update_interval": update_interval,
        "sparse_weights": sum(spec.numel for spec in sparsifier.specs),
        "active_weights": sum(layer.active for layer in sparsifier.engine.layers),
        "steps": steps, "updates": sparsifier.engine.num_updates,
        "skipped_updates": sparsifier.engine.skipped_updates,
        "seconds": round(seconds, 1), "steps_per_s": round(steps / seconds, 1),
        "exact_sparsity_every_step": exact, "first_violation": first_violation,
        "steps_with_zero_valued_active_weights": steps_with_zero_active,
        "most_zero_valued_active_weights": most_zero_active,
        "rss_mib": {step: memory[step]["rss_mib"] for step in REPORTED_STEPS if step in memory},
        "rss_growth_mib": round(memory[recorded[-1]]["rss_mib"] - memory[recorded[0]]["rss_mib"], 1) if recorded else None,
        "live_tensor_mib": {step: memory[step]["live_tensor_mib"] for step in REPORTED_STEPS if step in memory},
        "live_tensor_growth_mib": (round(memory[recorded[-1]]["live_tensor_mib"] - memory[recorded[0]]["live_tensor_mib"], 3)
                                   if recorded else None),
        "memory_every_1000_steps": memory,
        "counter_dtype": str(counters[0].dtype).removeprefix("torch."),
        "counter_bits": counters[0].element_size() * 8,
        "density": round(metrics["density"], 6),
        "exploration_degree": round(metrics["exploration_degree"], 6),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--update-interval", type=int, default=10)
    parser.add_argument("--method", default="dst_ee", choices=sorted(gsparse.METHODS))
    parser.add_argument("--distribution", default="erk", choices=("uniform", "er", "erk"))
    parser.add_argument("--json-out", help="also write the JSON here")
    args = parser.parse_args()
    result = soak(args.steps, args.update_interval, args.method, args.distribution)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as output:
            output.write(text + "\n")


if __name__ == "__main__":
    main()
