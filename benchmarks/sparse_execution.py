"""Whole-model training speed with sparse execution (recipe key ``execution``) off vs on.

Two bundled workloads, each trained for a fixed number of optimizer steps with a DST-EE (or
``--method rigl``) recipe at 90/95/98% sparsity, uniform distribution, a mask update every
``UPDATE_INTERVAL`` steps (each update step computes the dense weight gradient), and the recipe's
``execution`` set to ``dense`` (masked dense), ``sparse`` and ``auto``:

- link prediction on CollegeMsg (``gsparse.tasks.linkpred``: SAGE encoder, pair features, the
  pair predictor ``fc1 -> relu -> fc2``; only ``predictor.fc1.weight`` and ``predictor.fc2.weight``
  are sparse, as in the task's recipes), for several encoder / predictor widths; edges (scored
  training pairs) per second;
- the small ResNet on the digits (``gsparse.tasks.vision``, batch 128): every conv and the final
  linear weight are sparse, and only the final ``Linear(64, 10)`` can run with CSR kernels;
  images per second.

The loop is a plain one over the task objects (``setup``, ``build_model``, ``build_optimizer``,
``build_scheduler``, ``train_batches``, ``loss``) with :class:`gsparse.Sparsifier`, not the runner:
the runner trains one model per process, while here the three models (one per execution mode,
built from the same seed) take their optimizer steps in turn on the same batches - paired rounds,
the order rotated every round - so that load drift on a shared machine hits all of them alike.
Per mode: the median step time over the rounds after ``WARMUP_ROUNDS`` (auto's one-time
micro-benchmark runs inside its first step), the mean (mask updates amortised), throughput from
the mean, and the median of the per-round ratios dense / mode ("speedup"). As the runner does by
default: deterministic algorithms, ``torch.empty`` not NaN-filled.

Same masks: after every round the sparse and auto models' masks are compared with the dense
model's (``same_masks``: equal at the end, entries differing, the first step at which they
differ and the largest weight difference after step 1 and just before that step). Execution
changes only the rounding; over many steps training can amplify it (AdamW's normalised steps on
near-zero gradients, a 95%-sparse BatchNorm network) until a later update breaks a near-tie
differently, so the quick run, whose masks are checked by the test, makes one update.

Peak memory (link prediction): one fresh subprocess per configuration and mode (dense, sparse):
the growth of the resident set's high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs`` once the data, model and sparsifier exist; a tiny dense and CSR layer
are trained first so that loading kernels is not counted) over the update interval + 2 steps (one
mask update, with its dense weight gradient); glibc's mmap threshold fixed at 64 KiB in the child, as in ``sparse_linear.py``.

Run:  OMP_NUM_THREADS=2 python benchmarks/sparse_execution.py [--quick] [--method dst_ee|rigl]
Prints one JSON object (progress on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import gsparse
from gsparse.training import RunContext
from sparse_linear import PeakResident, cpu_model, run_memory_child  # noqa: E402  (this folder is on sys.path when run as a script)

MODES = ("dense", "sparse", "auto")
SPARSITIES = (0.9, 0.95, 0.98)
UPDATE_INTERVAL = 10
WARMUP_ROUNDS = 2
# (encoder hidden, predictor hidden): fc1 is [predictor_hidden, 2 * hidden + 7], fc2 [1, predictor_hidden]
LINKPRED_WIDTHS = ((64, 2048), (64, 4096), (512, 4096))
LINKPRED_STEPS = 60
VISION_STEPS = 60
# one mask update (at step 4) in the quick run: later updates can break near-ties among freshly grown
# weights (AdamW gives them nearly equal magnitudes) differently in dense and sparse execution
QUICK = {"widths": ((64, 512),), "sparsities": (0.95,), "linkpred_steps": 6, "vision_steps": 6,
         "update_interval": 4, "vision_sparsities": (0.9,)}

CONTEXT = RunContext(rank=0, world_size=1, accumulation_steps=1, distributed=False)


def deterministic_as_the_runner() -> None:
    """The runner's default (``deterministic=True``): deterministic algorithms, without NaN-filling
    every ``torch.empty``."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def recipe(method: str, sparsity: float, execution: str, include: list[str] | None, update_interval: int,
           steps: int) -> dict:
    """The bundled DST-EE / RigL recipes' settings, uniform, with a fixed update interval."""
    drop = {"dst_ee": {"drop_fraction": 0.5, "final_drop_fraction": 0.005},
            "rigl": {"drop_fraction": 0.3}}[method]
    result = {"method": method, "sparsity": sparsity, "distribution": "uniform", "seed": 0, "execution": execution,
              "schedule": {"update_interval": update_interval, "drop_fraction_decay": "cosine",
                           "last_update_step": steps, **drop}}
    if method == "dst_ee":
        result["method_args"] = {"c": 0.01, "eps": 1.0}
    if include:
        result["params"] = {"include": include}
    return result


# ---- the two workloads ---------------------------------------------------------------------------

def linkpred_task(hidden: int, predictor_hidden: int):
    from gsparse.tasks.linkpred import LinkPredConfig
    from gsparse.tasks.linkpred.task import LinkPredTask

    task = LinkPredTask(LinkPredConfig(hidden=hidden, predictor_hidden=predictor_hidden, baselines=False,
                                       progress=False))
    task.setup(CONTEXT)
    return task


def vision_task():
    from gsparse.tasks.vision.task import VisionTask
    from gsparse.tasks.vision.train import VisionConfig

    task = VisionTask(VisionConfig(progress=False))
    task.setup(CONTEXT)
    return task


LINKPRED_INCLUDE = ["predictor.fc1.weight", "predictor.fc2.weight"]


def batches_for(task, steps: int) -> list:
    """The task's training batches for ``steps`` optimizer steps (epochs 1, 2, ... as needed)."""
    batches, epoch = [], 1
    while len(batches) < steps:
        batches.extend(task.train_batches(epoch, CONTEXT))
        epoch += 1
    return batches[:steps]


class Run:
    """One model of a task with its optimizer, schedule and sparsifier (``execution`` = mode)."""

    def __init__(self, task, recipe_dict: dict, total_steps: int):
        self.task = task
        self.model = task.build_model()  # seeded: the same initial weights for every mode
        task.prepare(self.model, CONTEXT)
        self.optimizer = task.build_optimizer(self.model)
        self.scheduler = task.build_scheduler(self.optimizer, total_steps)
        self.sparsifier = gsparse.Sparsifier(self.model, self.optimizer, recipe_dict)
        self.losses: list[float] = []

    def step(self, batch) -> None:
        loss = self.task.loss(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.losses.append(loss.item())


class MaskAgreement:
    """After every round: does each run's mask agree with the dense run's? Records how far the sparse
    weights are apart after step 1 (rounding: the kernels sum in other orders), the first step at
    which a mask differs and how far apart the weights were just before it (training can amplify
    the rounding; an update then breaks a near-tie in its ranking differently)."""

    def __init__(self, runs: dict[str, "Run"]):
        self.runs = runs
        self.first_difference: dict[str, dict | None] = {name: None for name in runs if name != "dense"}
        self._weight_difference = {name: 0.0 for name in self.first_difference}
        self.after_first_step: dict[str, float | None] = {name: None for name in self.first_difference}

    def after_round(self, step: int) -> None:
        reference = self.runs["dense"].sparsifier
        for name in self.first_difference:
            if self.first_difference[name] is not None:
                continue
            sparsifier = self.runs[name].sparsifier
            masks = sparsifier.masks
            differing = sum(int((masks[layer] != mask).sum()) for layer, mask in reference.masks.items())
            if differing:
                self.first_difference[name] = {"step": step, "entries": differing,
                                               "max_weight_difference_before": self._weight_difference[name]}
            else:
                self._weight_difference[name] = max(float((mine - theirs).abs().max()) for mine, theirs in
                                                    zip(sparsifier.params, reference.params))
                if step == 1:
                    self.after_first_step[name] = self._weight_difference[name]

    def report(self) -> dict:
        reference = self.runs["dense"]
        differing = {}
        for name in self.first_difference:
            masks = self.runs[name].sparsifier.masks
            differing[name] = sum(int((masks[layer] != mask).sum()) for layer, mask in
                                  reference.sparsifier.masks.items())
        loss_difference = {name: max(abs(a - b) for a, b in zip(self.runs[name].losses, reference.losses))
                           for name in self.first_difference}
        return {"masks_equal": all(count == 0 for count in differing.values()), "mask_entries_differing": differing,
                "mask_updates": reference.sparsifier.engine.num_updates, "first_difference": self.first_difference,
                "max_weight_difference_after_step_1": self.after_first_step,
                "max_loss_difference": {name: float(f"{value:.3g}") for name, value in loss_difference.items()}}


def paired_steps(runs: dict[str, Run], batches: list, agreement: MaskAgreement) -> dict[str, list[float]]:
    """Step every run once per batch, in a rotated order each round; ms per step and mode."""
    names = list(runs)
    times = {name: [] for name in names}
    for index, batch in enumerate(batches):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name].step(batch)
            times[name].append((time.perf_counter() - start) * 1e3)
        with torch.no_grad():
            agreement.after_round(index + 1)
    return times


def summarize(times: dict[str, list[float]], examples_per_step: int, unit: str) -> dict:
    timed = {name: values[WARMUP_ROUNDS:] for name, values in times.items()}
    dense = timed["dense"]
    result = {}
    for name, values in timed.items():
        mean = statistics.fmean(values)
        entry = {"median_step_ms": round(statistics.median(values), 2), "mean_step_ms": round(mean, 2),
                 f"{unit}_per_s": round(examples_per_step * 1e3 / mean, 1)}
        if name != "dense":
            entry["speedup"] = round(statistics.median(d / v for d, v in zip(dense, values)), 3)
            entry["throughput_ratio"] = round(statistics.fmean(dense) / mean, 3)
        result[name] = entry
    return result


def sparse_layers(run: Run) -> dict:
    """Shape and whether it can run sparse (the ``sparse`` run's report) of each sparse layer."""
    parameters = dict(run.model.named_parameters())
    report = run.sparsifier.execution_report()
    return {name: {"shape": list(parameters[name].shape), "runs": report[name]["mode"],
                   "why": report[name]["reason"], "density": round(report[name]["density"], 4)}
            for name in report}


def auto_choices(run: Run) -> dict:
    return {name: {key: entry[key] for key in ("mode", "reason", "dense_ms", "sparse_ms")}
            for name, entry in run.sparsifier.execution_report().items()}


def measure(task, method: str, sparsity: float, include, steps: int, update_interval: int, examples: int,
            unit: str) -> dict:
    batches = batches_for(task, steps)
    runs = {mode: Run(task, recipe(method, sparsity, mode, include, update_interval, steps), steps)
            for mode in MODES}
    agreement = MaskAgreement(runs)
    times = paired_steps(runs, batches, agreement)
    return {"sparsity": sparsity, "speed": summarize(times, examples, unit), "same_masks": agreement.report(),
            "auto_chose": auto_choices(runs["auto"]), "sparse_layers": sparse_layers(runs["sparse"])}


# ---- peak memory in a fresh process --------------------------------------------------------------

def _warm_kernels() -> None:
    """Train a tiny dense and a tiny CSR layer so that loading kernels and thread pools is not measured."""
    from gsparse.kernels import CSRStructure, csr_linear

    mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.1
    weight = torch.nn.Parameter(torch.randn(64, 64) * mask)
    inputs = torch.randn(32, 64, requires_grad=True)
    structure = CSRStructure.from_mask(mask)
    for dense_grad in (False, True):
        csr_linear(inputs, weight, None, structure, dense_grad).sum().backward()
    torch.nn.functional.linear(inputs, weight).sum().backward()


def peak_memory_child(hidden: int, predictor_hidden: int, method: str, sparsity: float, mode: str,
                      steps: int, update_interval: int) -> dict:
    """Peak resident-set growth over ``steps`` training steps (this process must be fresh)."""
    deterministic_as_the_runner()
    task = linkpred_task(hidden, predictor_hidden)
    batches = batches_for(task, steps)
    run = Run(task, recipe(method, sparsity, mode, LINKPRED_INCLUDE, update_interval, steps), steps)
    _warm_kernels()
    resident = PeakResident()
    for batch in batches:
        run.step(batch)
    peak = resident.peak_kb()
    return {"growth_mb": round((peak - resident.baseline) / 2**10, 1), "peak_rss_mb": round(peak / 2**10, 1),
            "method": resident.method}


def memory_in_subprocess(*configuration) -> dict:
    return run_memory_child(__file__, configuration)


# ---- main ----------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration, a few steps (smoke run)")
    parser.add_argument("--method", choices=("dst_ee", "rigl"), default="dst_ee")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(peak_memory_child(*json.loads(args.memory_child))))
        return

    quick = args.quick
    widths = QUICK["widths"] if quick else LINKPRED_WIDTHS
    sparsities = QUICK["sparsities"] if quick else SPARSITIES
    vision_sparsities = QUICK["vision_sparsities"] if quick else SPARSITIES
    linkpred_steps = QUICK["linkpred_steps"] if quick else LINKPRED_STEPS
    vision_steps = QUICK["vision_steps"] if quick else VISION_STEPS
    update_interval = QUICK["update_interval"] if quick else UPDATE_INTERVAL
    memory_steps = update_interval + 2
    from gsparse.tasks.linkpred import LinkPredConfig

    deterministic_as_the_runner()
    load_before = os.getloadavg()
    started = time.time()

    linkpred = []
    for hidden, predictor_hidden in widths:
        task = linkpred_task(hidden, predictor_hidden)
        for sparsity in sparsities:
            row = {"hidden": hidden, "predictor_hidden": predictor_hidden,
                   **measure(task, args.method, sparsity, LINKPRED_INCLUDE, linkpred_steps, update_interval,
                             task.batch_size, "edges")}
            row["peak_training_memory"] = {
                mode: memory_in_subprocess(hidden, predictor_hidden, args.method, sparsity, mode, memory_steps,
                                           update_interval)
                for mode in ("dense", "sparse")}
            linkpred.append(row)
            speed = row["speed"]
            print(f"linkpred hidden {hidden} predictor {predictor_hidden} sparsity {sparsity}: sparse "
                  f"{speed['sparse']['speedup']}x, auto {speed['auto']['speedup']}x; masks equal "
                  f"{row['same_masks']['masks_equal']}; memory dense "
                  f"{row['peak_training_memory']['dense']['growth_mb']} MB, sparse "
                  f"{row['peak_training_memory']['sparse']['growth_mb']} MB", file=sys.stderr)

    vision = []
    task = vision_task()
    for sparsity in vision_sparsities:
        row = {"model": task.config.model, **measure(task, args.method, sparsity, None, vision_steps,
                                                     update_interval, task.batch_size, "images")}
        vision.append(row)
        print(f"vision {task.config.model} sparsity {sparsity}: sparse {row['speed']['sparse']['speedup']}x, "
              f"auto {row['speed']['auto']['speedup']}x; masks equal {row['same_masks']['masks_equal']}",
              file=sys.stderr)

    print(json.dumps({
        "benchmark": "sparse_execution",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "quick": quick, "method": args.method, "distribution": "uniform", "update_interval": update_interval,
        "warmup_rounds": WARMUP_ROUNDS, "deterministic_algorithms": True, "seconds": round(time.time() - started, 1),
        "linkpred": {"dataset": "collegemsg", "batch_size": LinkPredConfig.batch_size,
                     "steps": linkpred_steps, "memory_steps": memory_steps, "results": linkpred},
        "vision": {"dataset": "digits", "batch_size": task.batch_size, "steps": vision_steps, "results": vision},
    }, indent=1))


if __name__ == "__main__":
    main()
