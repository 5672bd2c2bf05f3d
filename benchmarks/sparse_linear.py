"""Masked linear layers executed dense vs with gsparse's CSR kernels (``gsparse.kernels.csr_linear``).

For each shape (2048x2048, 4096x4096), density (0.10, 0.05, 0.02 = 90/95/98% sparsity) and batch
(64, 256 rows), in one paired run (dense and sparse rounds interleaved; medians of the rounds,
speedup = median of the per-round ratios):

- inference forward under ``torch.no_grad``: ``F.linear`` on the masked weight vs ``csr_linear``
  (which gathers the active values from the dense weight each call), and vs a CSR weight built
  once (``prebuilt_csr``: what an exported sparse model runs);
- a full training step of one layer whose input needs a gradient (a hidden layer): forward,
  backward, ``AdamW.step()``, ``zero_grad``; dense masked = weight gradient masked, sparse = the
  sampled gradient; both re-mask the weight after the step, as gsparse does (``zero_inactive_``).
  AdamW is torch's fused implementation by default (``--adamw``): the for-loop one takes ~60 ms
  a step on a 2048x2048 weight on 2 CPU cores, ~30x the fused one, and hides any kernel's gain;
- peak training memory of each: on CUDA ``torch.cuda.max_memory_allocated``; on CPU, in a fresh
  subprocess per configuration and mode, the growth of the resident set's high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs`` once the parameter, mask and data exist;
  ``ru_maxrss`` where that reset is not allowed) over 3 steps: optimizer state, gradients,
  saved activations, the CSR structure and transients (a tiny layer is trained first, so that
  loading kernels and thread pools is not counted; glibc's mmap threshold is fixed at 64 KiB
  in the child so that the figure repeats run to run).

With ``--structure block`` the masks are whole blocks (``structure: block``) and each
configuration (2048x2048 and 4096x4096, 95% and 98% sparsity, 4x4 and 8x8 blocks, batch 256) is
measured dense vs CSR vs BSR in one paired run: the inference forward of the training layer
(``csr_linear`` / ``bsr_linear``, gathering values each call) and of an exported layer (the weight
built once: ``CSRLinear``, and the same forward with a BSR weight), and the full training step
(forward, backward, AdamW step) with each kernel; ``bsr_vs_csr`` is the median per-round ratio
CSR time / BSR time. No memory measurement in this mode.

Run:  python benchmarks/sparse_linear.py [--quick] [--device cuda] [--structure block]
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import gsparse
from gsparse.backends.base import zero_inactive_
from gsparse.export import CSRLinear
from gsparse.kernels import BSRStructure, CSRStructure, bsr_blocksize, bsr_linear, csr_linear

SHAPES = ((2048, 2048), (4096, 4096))
DENSITIES = (0.10, 0.05, 0.02)
BATCHES = (64, 256)
QUICK = {"shapes": ((512, 512),), "densities": (0.05,), "batches": (64,)}
MEMORY_STEPS = 3
BLOCK = {"densities": (0.05, 0.02), "blocks": ((4, 4), (8, 8)), "batches": (256,)}
QUICK_BLOCK = {"shapes": ((512, 512),), "densities": (0.05,), "blocks": ((4, 4),), "batches": (64,)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Layer:
    """One masked linear layer (weight, bias, mask, its AdamW) and the data it is trained on; with
    ``block`` the mask is whole ``block`` blocks, each active with probability ``density``."""

    def __init__(self, out_features, in_features, density, batch, device, adamw="fused", seed=0, block=None):
        self.adamw_options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[adamw]
        generator = torch.Generator().manual_seed(seed)
        if block is None:
            mask = torch.rand(out_features, in_features, generator=generator) < density
        else:
            grid = torch.rand(out_features // block[0], in_features // block[1], generator=generator) < density
            mask = grid.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
        self.mask, self.block = mask.to(device), block
        weight = torch.randn(out_features, in_features, generator=generator) / in_features ** 0.5
        self.weight = torch.nn.Parameter(weight.to(device) * self.mask)
        self.bias = torch.nn.Parameter(torch.zeros(out_features, device=device))
        self.inputs = torch.randn(batch, in_features, generator=generator).to(device).requires_grad_()
        self.grad_output = torch.randn(batch, out_features, generator=generator).to(device)
        self.optimizer = None
        self.structure = None
        self.blocks = None

    def start_training(self, sparse: bool, kernel: str = "csr") -> None:
        """``kernel`` "bsr": the forward and input gradient with BSR (the layer's blocks, as sparse execution picks them)."""
        self.optimizer = torch.optim.AdamW([self.weight, self.bias], lr=1e-3, **self.adamw_options)
        if sparse:
            self.structure = CSRStructure.from_mask(self.mask)
        if sparse and kernel == "bsr":
            blocksize = bsr_blocksize(self.block, self.weight.dtype, self.weight.device)
            if blocksize is None:
                raise RuntimeError(f"torch has no BSR kernel for {self.block} blocks on {self.weight.device.type}")
            self.blocks = BSRStructure.from_mask(self.mask, blocksize)

    def forward(self, sparse: bool) -> torch.Tensor:
        if sparse and self.blocks is not None:
            return bsr_linear(self.inputs, self.weight, self.bias, self.blocks, self.structure)
        if sparse:
            return csr_linear(self.inputs, self.weight, self.bias, self.structure)
        return F.linear(self.inputs, self.weight, self.bias)

    def training_step(self, sparse: bool) -> None:
        self.forward(sparse).backward(self.grad_output)
        if not sparse:  # the sampled gradient is zero at inactive entries already
            zero_inactive_(self.weight.grad, self.mask)
        self.optimizer.step()
        with torch.no_grad():
            zero_inactive_(self.weight, self.mask)
        self.optimizer.zero_grad(set_to_none=True)
        self.inputs.grad = None


def paired(steps: dict, rounds: int, synchronize, ratios: dict | None = None) -> dict:
    """Median ms of each step over interleaved rounds (after 2 warm-up rounds), the median
    per-round speedup of each over the first (the dense one), and for each ``ratios`` entry
    ``name: (slower, faster)`` the median per-round ratio of those two steps' times."""
    def timed(step):
        start = time.perf_counter()
        step()
        synchronize()
        return (time.perf_counter() - start) * 1e3

    for _ in range(2):
        for step in steps.values():
            timed(step)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timed(step))
    baseline = times[next(iter(steps))]
    result = {}
    for name, values in times.items():
        result[f"{name}_ms"] = round(statistics.median(values), 3)
        if values is not baseline:
            result[f"{name}_speedup"] = round(statistics.median(b / v for b, v in zip(baseline, values)), 2)
    for name, (slower, faster) in (ratios or {}).items():
        result[name] = round(statistics.median(s / f for s, f in zip(times[slower], times[faster])), 2)
    return result


def measure_speed(out_features, in_features, density, batch, device, adamw, rounds) -> dict:
    synchronize = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    dense, sparse = (Layer(out_features, in_features, density, batch, device, adamw) for _ in range(2))
    dense.start_training(sparse=False)
    sparse.start_training(sparse=True)
    # what an exported model runs: a CSR weight built once, no gather from a dense parameter
    prebuilt = sparse.structure.matrix(sparse.structure.gather(sparse.weight.detach()))
    bias = sparse.bias.detach().unsqueeze(1)

    def inference(layer, is_sparse):
        def run():
            with torch.no_grad():
                layer.forward(is_sparse)
        return run

    return {
        "nnz": sparse.structure.nnz,
        "forward_inference": paired({"dense": inference(dense, False), "sparse": inference(sparse, True),
                                     "prebuilt_csr": lambda: torch.addmm(bias, prebuilt, sparse.inputs.detach().t())},
                                    3 * rounds, synchronize),
        "training_step": paired({"dense": lambda: dense.training_step(False),
                                 "sparse": lambda: sparse.training_step(True)}, rounds, synchronize),
    }


def measure_block_speed(out_features, in_features, density, block, batch, device, adamw, rounds) -> dict:
    """Dense vs CSR vs BSR on one block mask (three copies of the same layer), paired."""
    synchronize = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    dense, csr, bsr = (Layer(out_features, in_features, density, batch, device, adamw, block=block) for _ in range(3))
    dense.start_training(sparse=False)
    csr.start_training(sparse=True)
    bsr.start_training(sparse=True, kernel="bsr")
    inputs = csr.inputs.detach()
    exported_csr = CSRLinear(csr.weight.detach(), csr.bias.detach())
    bsr_weight = bsr.blocks.matrix(bsr.blocks.gather(bsr.weight.detach()))  # built once, as an export would
    bsr_bias = bsr.bias.detach().unsqueeze(1)

    def exported_bsr():  # CSRLinear's forward with a BSR weight
        return torch.addmm(bsr_bias, bsr_weight, inputs.t()).t().contiguous()

    def no_grad(step):
        def run():
            with torch.no_grad():
                step()
        return run

    return {
        "nnz": csr.structure.nnz,
        "bsr_blocksize": list(bsr.blocks.blocksize),
        "forward_inference": paired(
            {"dense": no_grad(lambda: dense.forward(False)), "csr": no_grad(lambda: csr.forward(True)),
             "bsr": no_grad(lambda: bsr.forward(True)), "exported_csr": no_grad(lambda: exported_csr(inputs)),
             "exported_bsr": no_grad(exported_bsr)},
            3 * rounds, synchronize, {"bsr_vs_csr": ("csr", "bsr"), "exported_bsr_vs_csr": ("exported_csr", "exported_bsr")}),
        "training_step": paired({"dense": lambda: dense.training_step(False), "csr": lambda: csr.training_step(True),
                                 "bsr": lambda: bsr.training_step(True)}, rounds, synchronize,
                                {"bsr_vs_csr": ("csr", "bsr")}),
    }


def main_block(args) -> None:
    """``--structure block``: dense vs CSR vs BSR on block masks."""
    grid = dict(QUICK_BLOCK if args.quick else {"shapes": SHAPES, **BLOCK})
    if args.blocks:
        grid["blocks"] = tuple(tuple(int(side) for side in block.split("x")) for block in args.blocks.split(","))
    if args.shapes:
        grid["shapes"] = tuple(tuple(int(side) for side in shape.split("x")) for shape in args.shapes.split(","))
    rounds = args.rounds or (3 if args.quick else 9)
    load_before = os.getloadavg()
    rows = []
    for out_features, in_features in grid["shapes"]:
        for density in grid["densities"]:
            for block in grid["blocks"]:
                for batch in grid["batches"]:
                    row = {"shape": [out_features, in_features], "density": density, "block": list(block),
                           "batch": batch}
                    row.update(measure_block_speed(out_features, in_features, density, block, batch, args.device,
                                                   args.adamw, rounds))
                    rows.append(row)
                    forward, step = row["forward_inference"], row["training_step"]
                    print(f"{out_features}x{in_features} density {density} blocks {block[0]}x{block[1]} batch {batch}: "
                          f"training step dense {step['dense_ms']} csr {step['csr_ms']} bsr {step['bsr_ms']} ms "
                          f"(bsr {step['bsr_vs_csr']}x csr); exported forward csr {forward['exported_csr_ms']} "
                          f"bsr {forward['exported_bsr_ms']} ms (bsr {forward['exported_bsr_vs_csr']}x csr)",
                          file=sys.stderr)
    print(json.dumps({
        "benchmark": "sparse_linear", "structure": "block", "torch": torch.__version__, "device": args.device,
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "training_step_rounds": rounds, "forward_rounds": 3 * rounds, "input_requires_grad": True,
        "adamw": args.adamw, "results": rows,
    }, indent=1))


def resident_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakResident:
    """This process's peak resident memory from now on: VmHWM, reset through /proc/self/clear_refs,
    or the lifetime ru_maxrss where that is not possible."""

    def __init__(self):
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current resident set
            self.baseline, self.method = resident_kb("VmRSS"), "VmHWM growth after clear_refs"
        except OSError:
            self.baseline, self.method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss growth"

    def peak_kb(self) -> int:
        if self.method.startswith("VmHWM"):
            return resident_kb("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def growth_kb(self) -> int:
        return self.peak_kb() - self.baseline


def peak_memory_mb(out_features, in_features, density, batch, device, adamw, sparse: bool) -> tuple[float, str]:
    """Peak memory growth of ``MEMORY_STEPS`` training steps (this process must be fresh on CPU)."""
    warm_up = Layer(64, 64, density, 8, device, adamw)  # loads kernels and thread pools outside the measurement
    warm_up.start_training(sparse)
    warm_up.training_step(sparse)
    del warm_up
    layer = Layer(out_features, in_features, density, batch, device, adamw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        method = "torch.cuda.max_memory_allocated"
    else:
        resident = PeakResident()
        method = resident.method
    layer.start_training(sparse)
    for _ in range(MEMORY_STEPS):
        layer.training_step(sparse)
    if device.startswith("cuda"):
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20, method
    return resident.growth_kb() / 2**10, method


def run_memory_child(script: str, configuration) -> object:
    """Run ``script --memory-child <configuration as JSON>`` in a fresh process (the same gsparse on
    its path) and return the JSON it prints."""
    arguments = [sys.executable, script, "--memory-child", json.dumps(configuration)]
    package_root = os.path.dirname(os.path.dirname(gsparse.__file__))  # the child imports this same gsparse
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               # a fixed mmap threshold: glibc then returns every freed tensor at once, instead of keeping
               # some in its heap depending on the order of allocations, so that peaks repeat run to run
               MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run(arguments, capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout)


def memory_in_subprocess(*configuration) -> tuple[float, str]:
    peak, method = run_memory_child(__file__, configuration)
    return peak, method


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration, few rounds (smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--adamw", choices=("fused", "foreach", "for-loop"), default="fused",
                        help="torch's AdamW implementation, the same for both modes (default: fused)")
    parser.add_argument("--rounds", type=int, default=None, help="training-step rounds (forward: 3x as many)")
    parser.add_argument("--structure", choices=("unstructured", "block"), default="unstructured",
                        help="block: masks of whole blocks, dense vs CSR vs BSR (no memory measurement)")
    parser.add_argument("--blocks", help="with --structure block: block sizes, e.g. 4x4,8x8,2x8 (default 4x4,8x8)")
    parser.add_argument("--shapes", help="with --structure block: layer shapes, e.g. 2048x2048 (default 2048 and 4096)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory_mb(*json.loads(args.memory_child))))
        return
    if args.structure == "block":
        main_block(args)
        return

    shapes, densities, batches = (QUICK["shapes"], QUICK["densities"], QUICK["batches"]) if args.quick \
        else (SHAPES, DENSITIES, BATCHES)
    rounds = args.rounds or (3 if args.quick else 9)
    load_before = os.getloadavg()
    rows, memory_method = [], None
    for out_features, in_features in shapes:
        for density in densities:
            for batch in batches:
                row = {"shape": [out_features, in_features], "density": density, "batch": batch}
                configuration = (out_features, in_features, density, batch, args.device, args.adamw)
                row.update(measure_speed(*configuration, rounds))
                dense_mb, memory_method = memory_in_subprocess(*configuration, False)
                sparse_mb, _ = memory_in_subprocess(*configuration, True)
                row["peak_training_memory_mb"] = {"dense": round(dense_mb, 1), "sparse": round(sparse_mb, 1)}
                rows.append(row)
                print(f"{out_features}x{in_features} density {density} batch {batch}: forward "
                      f"{row['forward_inference']['sparse_speedup']}x (prebuilt CSR "
                      f"{row['forward_inference']['prebuilt_csr_speedup']}x), training step "
                      f"{row['training_step']['sparse_speedup']}x", file=sys.stderr)

    at_95 = [r for r in rows if r["density"] == 0.05 and min(r["shape"]) >= 2048]
    print(json.dumps({
        "benchmark": "sparse_linear",
        "torch": torch.__version__,
        "device": args.device,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "training_step_rounds": rounds,
        "forward_rounds": 3 * rounds,
        "input_requires_grad": True,
        "adamw": args.adamw,
        "memory_method": memory_method,
        "results": rows,
        "targets_at_95_percent_2048_up": {
            "forward_min_speedup": min((r["forward_inference"]["sparse_speedup"] for r in at_95), default=None),
            "prebuilt_csr_forward_min_speedup": min((r["forward_inference"]["prebuilt_csr_speedup"] for r in at_95),
                                                    default=None),
            "training_step_min_speedup": min((r["training_step"]["sparse_speedup"] for r in at_95), default=None),
            "forward_target": 3.0, "training_step_target": 1.5,
        },
    }, indent=1))


if __name__ == "__main__":
    main()
