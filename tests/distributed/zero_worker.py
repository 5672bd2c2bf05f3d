"""Multi-process checks of the DeepSpeed integration, run by tests/test_zero.py under torchrun.

Every rank runs the scenarios named on the command line; rank 0 writes a JSON of findings that the
pytest side asserts on. Full masks and weights are gathered here for checking only: the library
itself never gathers them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: tests.* modules
import deepspeed  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param  # noqa: E402

import gsparse  # noqa: E402
import gsparse.deepspeed as gds  # noqa: E402
from gsparse.deepspeed import UnsupportedLayout  # noqa: E402
from gsparse.selection import reference_top_k, select_top_k  # noqa: E402
from gsparse.training import shutdown_distributed  # noqa: E402
from tests.test_method_seams import expected_total, toy_recipe  # noqa: E402  (registers the toy methods)

STEPS = int(os.environ.get("GSPARSE_TEST_STEPS", "200"))


def enable_cpu_fp16() -> None:
    """Test-only: DeepSpeed's CPU accelerator declares no fp16, although torch's CPU kernels run it.
    Declaring it lets these tests drive DeepSpeed's real fp16 paths (loss scaling, overflow skip,
    fp16 partitions) on a machine without a GPU; accelerators with fp16 are left alone."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu" or accelerator.is_fp16_supported():
        return
    supported = accelerator.supported_dtypes()
    type(accelerator).is_fp16_supported = lambda self: True
    type(accelerator).supported_dtypes = lambda self: [*supported, torch.float16]
MICRO_BATCH = 8


def log(*args):
    if dist.get_rank() == 0:
        print(*args, flush=True)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 4))


def batch(step: int, micro: int = 0):
    """The same batch on every rank, so the averaged gradient equals a single process's exactly."""
    generator = torch.Generator().manual_seed(10_000 + 7 * step + micro)
    inputs = torch.randn(MICRO_BATCH, 12, generator=generator)
    targets = (inputs[:, :4].argmax(dim=1) + (inputs[:, 4] > 0).long()) % 4
    return inputs, targets


def recipe(method: str, interval: int = 10, last: int = 150, structure: str = "unstructured") -> dict:
    if structure == "n_m":  # 2:4 fixes the sparsity at 1 - 2/4
        return {**_recipe(method, interval, last), "structure": structure, "n_m": [2, 4], "sparsity": 0.5}
    return {**_recipe(method, interval, last), "structure": structure}


def _recipe(method: str, interval: int, last: int) -> dict:
    if method == "admm":  # ZeRO-sharded Z and U, projected with the distributed top-k
        return {"method": "admm", "sparsity": 0.85, "distribution": "erk", "seed": 5,
                "method_args": {"pretrain_steps": 40, "admm_steps": 80, "admm_interval": 20, "rho": 0.05,
                                "rho_growth": 1.5}}
    if method == "gmp":
        return {"method": "gmp", "sparsity": 0.85, "distribution": "erk", "seed": 5,
                "schedule": {"update_interval": interval, "first_update_step": 20, "last_update_step": last}}
    return {"method": method, "sparsity": 0.85, "distribution": "erk", "seed": 5,
            "schedule": {"update_interval": interval, "drop_fraction": 0.4, "drop_fraction_decay": "cosine",
                         "final_drop_fraction": 0.05, "last_update_step": last},
            "method_args": {"c": 0.05} if method == "dst_ee" else {}}


def ds_config(stage: int, *, accumulation: int = 1, dtype: str = "fp32", sparse_recipe: dict | None = None) -> dict:
    config = {"train_micro_batch_size_per_gpu": MICRO_BATCH, "gradient_accumulation_steps": accumulation,
              "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 50},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9, "gradient_clipping": 0.0, "wall_clock_breakdown": False}
    if dtype == "bf16":
        config["bf16"] = {"enabled": True}
    if dtype == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 8}
    if sparse_recipe is not None:
        config["gsparse"] = sparse_recipe
    return config


def make_optimizer(name: str, model):
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    return torch.optim.SGD(model.parameters(), lr=0.05)


def build(stage, method, *, seed=0, optimizer="adamw", accumulation=1, dtype="fp32", weight_masking="auto",
          execution="dense", **recipe_args):
    model = make_model(seed)
    sparse_recipe = dict(recipe(method, **recipe_args), mask_weights_after_step=weight_masking, execution=execution)
    config = ds_config(stage, accumulation=accumulation, dtype=dtype, sparse_recipe=sparse_recipe)
    engine, _, _, _, sparsifier = gds.initialize(model=model, optimizer=make_optimizer(optimizer, model),
                                                 config=config)
    return engine, sparsifier


def train(engine, first_step: int, last_step: int, accumulation: int = 1, check=None):
    for step in range(first_step, last_step + 1):
        for micro in range(accumulation):
            inputs, targets = batch(step, micro)
            inputs = inputs.to(next(engine.module.parameters()).dtype)
            loss = torch.nn.functional.cross_entropy(engine(inputs).float(), targets)
            engine.backward(loss)
            engine.step()
        if check is not None:
            check(step)


def reference_run(method, steps, *, optimizer="adamw", accumulation=1, **recipe_args):
    """The single-process run the distributed one must equal."""
    model = make_model(0)
    torch_optimizer = make_optimizer(optimizer, model)
    sparsifier = gsparse.Sparsifier(model, torch_optimizer, recipe(method, **recipe_args))
    for step in range(1, steps + 1):
        torch_optimizer.zero_grad()
        for micro in range(accumulation):
            inputs, targets = batch(step, micro)
            (torch.nn.functional.cross_entropy(model(inputs), targets) / accumulation).backward()
        torch_optimizer.step()
    masks = {n: m.reshape(-1) for n, m in sparsifier.masks.items()}
    counters = {n: c.reshape(-1).long() for n, c in sparsifier.counters.items()}
    return masks, counters, {n: p.detach().clone() for n, p in model.named_parameters()}, sparsifier


def gather_full(pieces: dict[str, tuple[int, torch.Tensor]], numels: dict[str, int], dtype) -> dict[str, torch.Tensor]:
    """Test-only: assemble full tensors from every rank's (start, piece)."""
    full = {}
    for name, (start, piece) in pieces.items():
        buffer = torch.zeros(numels[name], dtype=dtype)
        buffer[start:start + piece.numel()] = piece.to(dtype)
        dist.all_reduce(buffer)  # pieces are disjoint, so the sum assembles them
        full[name] = buffer
    return full


def full_state(sparsifier, replicated: bool):
    numels = {spec.name: spec.numel for spec in sparsifier.specs}
    if replicated:
        masks = {n: m for n, (_, m) in sparsifier.local_masks().items()}
        counters = {n: c.long() for n, (_, c) in sparsifier.local_counters().items()}
        return masks, counters
    masks = {n: m.bool() for n, m in gather_full(sparsifier.local_masks(), numels, torch.int64).items()}
    counters = gather_full(sparsifier.local_counters(), numels, torch.int64)
    return masks, counters


def full_weights(engine) -> dict[str, torch.Tensor]:
    if engine.zero_optimization_stage() == 0:
        return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    return {n: safe_get_full_fp32_param(p).detach().clone() for n, p in engine.module.named_parameters()}


def invariant_checker(engine, sparsifier, violations: dict):
    """Per step: exact global active count, master and low-precision weights zero where masked."""
    stage = engine.zero_optimization_stage()
    params = dict(engine.module.named_parameters())

    def check(step):
        active = torch.tensor([int(m.sum()) for _, m in sparsifier.local_masks().values()], dtype=torch.int64)
        if sparsifier.backend.communicator.world_size > 1:
            dist.all_reduce(active)
        expected = torch.tensor([layer.active for layer in sparsifier.engine.layers])
        violations["active_count"] += int((active != expected).sum())
        for layer, (name, (start, mask)) in enumerate(sparsifier.local_masks().items()):
            master = sparsifier.backend.weight(layer)
            violations["master_nonzero"] += int((master[~mask] != 0).sum())
            if stage == 3:
                low_precision = params[name].ds_tensor.reshape(-1)[:mask.numel()]
            else:
                low_precision = params[name].detach().reshape(-1)[start:start + mask.numel()]
            violations["low_precision_nonzero"] += int((low_precision[~mask] != 0).sum())

    return check


def scenario_train(results: dict, configs: list[str]):
    references = {}
    for config in configs:
        stage, method, *options = config.split("-")
        stage = int(stage)
        accumulation = 2 if "gas2" in options else 1
        dtype = next((name for name in ("bf16", "fp16") if name in options), "fp32")
        # "always": masks weights after every step too; the reference skips that (AdamW keeps zeros)
        weight_masking = "always" if "always" in options else "auto"
        # the reference always runs dense
        execution = "sparse" if "csr" in options else "auto" if "auto" in options else "dense"
        if execution == "auto":  # rank 0's timing, made deterministic: the biggest layer pays, the others not
            from gsparse.kernels import execution as execution_module
            from gsparse.kernels.choice import ExecutionChoice

            execution_module.choose_execution = lambda out, inp, nnz, rows, dtype, device: ExecutionChoice(
                "sparse" if out * inp >= 48 * 32 else "dense", 2.0, 1.0 if out * inp >= 48 * 32 else 3.0, "test")
        structure = next((name for option, name in (("fanin", "fan_in"), ("block", "block"), ("nm", "n_m"))
                          if option in options), "unstructured")
        engine, sparsifier = build(stage, method, accumulation=accumulation, dtype=dtype,
                                   weight_masking=weight_masking, execution=execution, structure=structure)
        if sparsifier.engine.mask_weights_after_step != (weight_masking == "always"):
            raise AssertionError(f"{config}: AdamW should let gsparse skip the post-step masking")
        violations = {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
        train(engine, 1, STEPS, accumulation, invariant_checker(engine, sparsifier, violations))
        replicated = sparsifier.backend.communicator.world_size == 1
        masks, counters = full_state(sparsifier, replicated)
        weights = full_weights(engine)
        metrics = sparsifier.metrics()
        entry = {"violations": violations, "steps": sparsifier.step, "updates": sparsifier.engine.num_updates,
                 "skipped": engine.skipped_steps, "low_precision_dtype": str(next(engine.module.parameters()).dtype),
                 "density": metrics["density"], "exploration": metrics["exploration_degree"],
                 "local_numel": {n: int(m.numel()) for n, (_, m) in sparsifier.local_masks().items()},
                 "execution": sorted({entry["mode"] for entry in sparsifier.execution_report().values()}),
                 "builds": [layer.builds for layer in sparsifier.execution.layers] if sparsifier.execution else []}
        rows = {spec.name: spec.shape[0] for spec in sparsifier.specs}
        entry["row_counts"] = {name: sorted(set(mask.reshape(rows[name], -1).sum(1).tolist()))
                               for name, mask in masks.items()}
        # structure: block (4 x 4): the active elements of every block of every layer
        entry["block_counts"] = {} if structure != "block" else {
            name: sorted(set(mask.reshape(rows[name] // 4, 4, -1, 4).sum((1, 3)).view(-1).tolist()))
            for name, mask in masks.items()}
        # structure: n_m (2:4): the active elements of every group of 4, and how many groups the
        # boundaries of this rank's pieces cut (a cut group goes through the distributed selection)
        entry["group_counts"] = {} if structure != "n_m" else {
            name: sorted(set(mask.reshape(-1, 4).sum(1).tolist())) for name, mask in masks.items()}
        numels = {spec.name: spec.numel for spec in sparsifier.specs}
        entry["cut_groups"] = sum(1 for name, (start, mask) in sparsifier.local_masks().items()
                                  for bound in (start, start + mask.numel()) if 0 < bound < numels[name] and bound % 4)
        if dist.get_rank() == 0 and dtype == "fp32":
            key = (method, accumulation, structure)
            if key not in references:
                references[key] = reference_run(method, STEPS, accumulation=accumulation, structure=structure)
            ref_masks, ref_counters, ref_weights, ref_sparsifier = references[key]
            entry["masks_equal"] = all(torch.equal(masks[n], ref_masks[n]) for n in ref_masks)
            entry["counters_equal"] = all(torch.equal(counters[n], ref_counters[n]) for n in ref_counters)
            entry["max_weight_diff"] = max(float((weights[n] - ref_weights[n]).abs().max()) for n in ref_weights)
            entry["reference_exploration"] = ref_sparsifier.metrics()["exploration_degree"]
            if os.environ.get("GSPARSE_DEBUG"):
                torch.save({"weights": weights, "ref_weights": ref_weights, "masks": masks, "ref_masks": ref_masks,
                            "counters": counters}, "debug.pt")
        results[f"train/{config}"] = entry
        log(config, entry)
        del engine, sparsifier


def scenario_select(results: dict):
    """Distributed selection on real ZeRO-2 and ZeRO-3 partitions equals the single-process rule."""
    for stage in (2, 3):
        engine, sparsifier = build(stage, "set")
        backend = sparsifier.backend
        generator = torch.Generator().manual_seed(123)  # same scores on every rank
        mismatches = 0
        for trial in range(20):
            full_scores, eligible, ks = [], [], []
            for spec in sparsifier.specs:
                values = torch.randint(0, 3 if trial % 2 else 1000, (spec.numel,), generator=generator).float()
                full_scores.append(values)
                eligible.append(torch.rand(spec.numel, generator=generator) < 0.7)
                ks.append(int(torch.randint(0, int(eligible[-1].sum()) + 1, (1,), generator=generator)))
            local = [(backend.local_slice(i).start, backend.local_slice(i).length) for i in range(len(ks))]
            chosen = select_top_k([s[a:a + n] for s, (a, n) in zip(full_scores, local)],
                                  [e[a:a + n] for e, (a, n) in zip(eligible, local)], ks, backend.communicator)
            pieces = {spec.name: (a, c) for spec, (a, n), c in zip(sparsifier.specs, local, chosen)}
            full = gather_full(pieces, {s.name: s.numel for s in sparsifier.specs}, torch.int64)
            for spec, scores, mask, k in zip(sparsifier.specs, full_scores, eligible, ks):
                mismatches += int(not torch.equal(full[spec.name].bool(), reference_top_k(scores, mask, k)))
        straddling = sum(1 for i in range(len(ks)) if 0 < backend.local_slice(i).length < sparsifier.specs[i].numel)
        results[f"select/stage{stage}/world{dist.get_world_size()}"] = {"mismatches": mismatches,
                                                                       "straddling_layers": straddling}
        log("select", stage, mismatches, straddling)
        del engine, sparsifier


def scenario_resume(results: dict, workdir: Path):
    """Save at step 75 and resume in a fresh engine: bitwise equal to not stopping."""
    cases = [(stage, method) for stage in (1, 2, 3) for method in ("dst_ee", "rigl")] + [(2, "admm"), (3, "admm")]
    for stage, method in cases:
        engine, sparsifier = build(stage, method)
        train(engine, 1, 120)
        masks, counters = full_state(sparsifier, False)
        weights = full_weights(engine)
        del engine, sparsifier

        engine, sparsifier = build(stage, method)
        train(engine, 1, 75)
        engine.save_checkpoint(str(workdir / f"resume-{stage}-{method}"))
        del engine, sparsifier

        engine, sparsifier = build(stage, method, seed=99)
        load_path, _ = engine.load_checkpoint(str(workdir / f"resume-{stage}-{method}"))
        resumed_step = sparsifier.step
        train(engine, 76, 120)
        masks_b, counters_b = full_state(sparsifier, False)
        weights_b = full_weights(engine)
        results[f"resume/{stage}-{method}"] = {
            "loaded": load_path is not None, "resumed_step": resumed_step,
            "masks_equal": all(torch.equal(masks[n], masks_b[n]) for n in masks),
            "counters_equal": all(torch.equal(counters[n], counters_b[n]) for n in counters),
            "weights_equal": all(torch.equal(weights[n], weights_b[n]) for n in weights),
        }
        log("resume", stage, method, results[f"resume/{stage}-{method}"])
        del engine, sparsifier


RESHARD_STEPS = (60, 120)  # save after the first, compare after the second


def scenario_reshard_save(results: dict, workdir: Path):
    """Save a ZeRO-2 SGD checkpoint (stateless optimizer: weights say everything) at this world size."""
    engine, sparsifier = build(2, "dst_ee", optimizer="sgd")
    train(engine, 1, RESHARD_STEPS[0])
    engine.save_checkpoint(str(workdir / f"reshard-from-{dist.get_world_size()}"), tag="ckpt")
    results[f"reshard_saved/{dist.get_world_size()}"] = {"step": sparsifier.step}


def scenario_reshard_load(results: dict, workdir: Path, source_world: int):
    source = workdir / f"reshard-from-{source_world}"
    engine, sparsifier = build(2, "dst_ee", optimizer="sgd", seed=7)
    engine.load_checkpoint(str(source), tag="ckpt", load_optimizer_states=False, load_lr_scheduler_states=False)
    loaded_step = sparsifier.step
    loaded_masks, _ = full_state(sparsifier, False)
    train(engine, RESHARD_STEPS[0] + 1, RESHARD_STEPS[1])
    masks, counters = full_state(sparsifier, False)
    entry = {"loaded_step": loaded_step}
    if dist.get_rank() == 0:
        ref_at_save = reference_run("dst_ee", RESHARD_STEPS[0], optimizer="sgd")
        ref_masks, ref_counters, _, _ = reference_run("dst_ee", RESHARD_STEPS[1], optimizer="sgd")
        entry["masks_at_load_equal"] = all(torch.equal(loaded_masks[n], ref_at_save[0][n]) for n in ref_masks)
        entry["masks_equal"] = all(torch.equal(masks[n], ref_masks[n]) for n in ref_masks)
        entry["counters_equal"] = all(torch.equal(counters[n], ref_counters[n]) for n in ref_counters)
    results[f"reshard/{source_world}->{dist.get_world_size()}"] = entry
    log("reshard", entry)


RUNNER_ZERO2 = {"gradient_accumulation_steps": 2, "steps_per_print": 10 ** 6, "zero_allow_untested_optimizer": True,
                "zero_optimization": {"stage": 2}}  # the task's batch_size sets the micro-batch


def scenario_runner_save(results: dict, workdir: Path):
    """The training runner at ZeRO-2 for 3 epochs: manifests, and only the two newest epochs kept."""
    from gsparse import checkpoint
    from gsparse.training import RunConfig, train as run_training
    from tests.test_training import RIGL, ToyTask

    run_dir = workdir / "runner-elastic"
    run_training(ToyTask(batch_size=32), RunConfig(epochs=3, recipe=RIGL, deepspeed_config=RUNNER_ZERO2,
                                                   run_dir=str(run_dir), progress=False, log=lambda line: None))
    folders = checkpoint.epoch_folders(run_dir / "checkpoints")
    manifest = json.loads((folders[0][1] / checkpoint.MANIFEST).read_text())
    results["runner_checkpoints/saved"] = {
        "folders": [folder.name for _, folder in folders], "world_size": manifest["world_size"],
        "epoch": manifest["epoch"], "shards": sorted(name for name in manifest["files"] if name.startswith("gsparse/")),
        "intact": [checkpoint.folder_problems(folder, json.loads((folder / checkpoint.MANIFEST).read_text()),
                                              sorted(json.loads((folder / checkpoint.MANIFEST).read_text())["files"]))
                   for _, folder in folders]}


def scenario_runner_resume(results: dict, workdir: Path):
    """Resume the 2-rank runner checkpoint on this many ranks: another sparsity is refused; with the
    newest epoch's gsparse shard truncated, the previous epoch is loaded, without its ZeRO-2
    optimizer state (another world size), and the logs have one row per epoch."""
    from gsparse.training import RunConfig, train as run_training
    from gsparse.training.runner import ResumeMismatch
    from tests.test_training import RIGL, ToyTask

    run_dir = workdir / "runner-elastic"
    entry = {}
    try:
        run_training(ToyTask(batch_size=32), RunConfig(epochs=4, recipe={**RIGL, "sparsity": 0.5}, resume=True,
                                                       deepspeed_config=RUNNER_ZERO2, run_dir=str(run_dir),
                                                       progress=False, log=lambda line: None))
    except ResumeMismatch as error:
        entry["mismatch"] = str(error)
    shard = run_dir / "checkpoints" / "epoch3" / "gsparse" / "rank00001-of-00002.pt"
    if dist.get_rank() == 0:
        shard.write_bytes(shard.read_bytes()[:64])
    dist.barrier()
    lines = []
    metrics = run_training(ToyTask(batch_size=32), RunConfig(epochs=4, recipe=RIGL, resume=True,
                                                             deepspeed_config=RUNNER_ZERO2, run_dir=str(run_dir),
                                                             progress=False, log=lines.append))
    entry.update({"resumed_from": metrics["resumed_from"], "optimizer_state_restored": metrics["optimizer_state_restored"],
                  "not_loaded": [line for line in lines if "is not loaded" in line],
                  "optimizer_line": [line for line in lines if line.startswith("resuming on ")],
                  "log_epochs": [json.loads(line)["epoch"] for line in (run_dir / "log.jsonl").read_text().splitlines()],
                  "update_steps": [json.loads(line)["step"]
                                   for line in (run_dir / "updates.jsonl").read_text().splitlines()],
                  "folders": sorted(path.name for path in (run_dir / "checkpoints").iterdir())})
    results[f"runner_checkpoints/resumed_on_{dist.get_world_size()}"] = entry
    log("runner_checkpoints", entry)


def scenario_fp16_overflow(results: dict):
    """An overflow-skipped fp16 step is no step: no mask update, no count (DeepSpeed's loss scaler)."""
    dtype = "fp16"
    for stage in (0, 1, 2, 3):
        engine, sparsifier = build(stage, "dst_ee", dtype=dtype)
        params = dict(engine.module.named_parameters())
        updates_seen = []
        for step in range(1, 26):
            inputs, targets = batch(step)
            inputs = inputs.half() if dtype == "fp16" else inputs
            loss = torch.nn.functional.cross_entropy(engine(inputs).float(), targets)
            if step in (10, 11):  # overflow exactly where the 10th real step (an update step) would be
                loss = loss * float("inf")
            engine.backward(loss)
            engine.step()
            updates_seen.append(sparsifier.engine.num_updates)
        low_precision_bad = 0
        for name, (start, mask) in sparsifier.local_masks().items():
            if stage == 3:
                low = params[name].ds_tensor.reshape(-1)[:mask.numel()]
            else:
                low = params[name].detach().reshape(-1)[start:start + mask.numel()]
            low_precision_bad += int((low[~mask] != 0).sum())
        results[f"fp16/{stage}"] = {"dtype": str(next(engine.module.parameters()).dtype),
                                    "optimizer": type(engine.optimizer).__name__,
                                    "sparse_steps": sparsifier.step, "skipped": engine.skipped_steps,
                                    "engine_steps": engine.global_steps, "updates_after_step": updates_seen,
                                    "low_precision_nonzero": low_precision_bad}
        log("fp16", stage, results[f"fp16/{stage}"])
        del engine, sparsifier


def scenario_refusals(results: dict):
    """Options gsparse cannot honour are refused at attach time with a message naming them."""
    cases = {"round_robin": {"stage": 2, "round_robin_gradients": True},
             "offload": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    for name, zero in cases.items():
        model = make_model()
        config = ds_config(2, sparse_recipe=recipe("rigl"))
        config["zero_optimization"] = zero
        try:
            gds.initialize(model=model, optimizer=make_optimizer("adamw", model), config=config)
            results[f"refusal/{name}"] = "accepted"
        except UnsupportedLayout as error:
            results[f"refusal/{name}"] = str(error)
    model = make_model()
    config = ds_config(2, sparse_recipe={**recipe("rigl"), "sparsity": 1.5})
    try:
        gds.initialize(model=model, optimizer=make_optimizer("adamw", model), config=config)
        results["refusal/bad_recipe"] = "accepted"
    except gsparse.RecipeError as error:
        results["refusal/bad_recipe"] = str(error)


def _sparse_training(engine, sparsifier, steps, check=None, poison_step=None):
    for step in range(1, steps + 1):
        inputs, targets = batch(step)
        loss = torch.nn.functional.cross_entropy(engine(inputs), targets)
        if step == poison_step:
            loss = loss * float("nan")
        engine.backward(loss)
        engine.step()
        if check is not None:
            check(step)


def _reference(sparse_recipe, steps, param_groups=None, poison_step=None):
    model = make_model(0)
    groups = model.parameters() if param_groups is None else param_groups(model)
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, sparse_recipe)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        inputs, targets = batch(step)
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        (loss * float("nan") if step == poison_step else loss).backward()
        optimizer.step()
    return model, sparsifier


def _compare(entry, sparsifier, engine, reference_model, reference):
    masks, counters = full_state(sparsifier, sparsifier.backend.communicator.world_size == 1)
    weights = full_weights(engine)
    if dist.get_rank() == 0:
        ref_weights = dict(reference_model.named_parameters())
        entry["masks_equal"] = all(torch.equal(masks[n], m.reshape(-1)) for n, m in reference.masks.items())
        entry["counters_equal"] = all(torch.equal(counters[n], c.reshape(-1).long())
                                      for n, c in reference.counters.items())
        entry["max_weight_diff"] = max(float((weights[n].reshape(-1) - p.detach().reshape(-1)).abs().max())
                                       for n, p in ref_weights.items())
        entry["weights_compared"] = sorted(ref_weights)
        if reference.engine.method.layer_parameters:  # what the method's views read at the last step
            entry["layer_parameter_values"] = sparsifier.engine._parameter_values
            entry["reference_layer_parameter_values"] = reference.engine._parameter_values


def scenario_seams(results: dict):
    """The toy methods of tests/test_method_seams.py at ZeRO-2/3 against a single process."""
    steps = 100
    for method in ("toy_dense_then_global", "toy_soft_threshold", "toy_learned_threshold"):
        sparse_recipe = toy_recipe(method)
        reference_model, reference = _reference(sparse_recipe, steps) if dist.get_rank() == 0 else (None, None)
        for stage in (2, 3):
            model = make_model(0)
            engine, _, _, _, sparsifier = gds.initialize(model=model, optimizer=make_optimizer("adamw", model),
                                                         config=ds_config(stage, sparse_recipe=sparse_recipe))
            violations = {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0, "budget": 0}
            checker = invariant_checker(engine, sparsifier, violations)

            def check(step, sparsifier=sparsifier, checker=checker, violations=violations):
                checker(step)
                total = sum(layer.active for layer in sparsifier.engine.layers)
                if method == "toy_dense_then_global" and total != expected_total(sparsifier, step):
                    violations["budget"] += 1

            _sparse_training(engine, sparsifier, steps, check)
            entry = {"violations": violations, "updates": sparsifier.engine.num_updates,
                     "local_numel": sum(int(m.numel()) for _, m in sparsifier.local_masks().values())}
            _compare(entry, sparsifier, engine, reference_model, reference)
            results[f"seams/{stage}-{method}"] = entry
            log("seams", stage, method, entry)
            del engine, sparsifier


def scenario_admm_groups(results: dict):
    """ADMM with parameters in two optimizer groups (and ZeRO-3 sub-groups): rho grows once per
    round, not once per group."""
    sparse_recipe = recipe("admm")

    def two_groups(model):
        return [{"params": [p for n, p in model.named_parameters() if not n.startswith("4.")]},
                {"params": [p for n, p in model.named_parameters() if n.startswith("4.")], "weight_decay": 0.0}]

    steps = 130
    reference_model, reference = _reference(sparse_recipe, steps, two_groups) if dist.get_rank() == 0 else (None, None)
    for stage in (1, 2, 3):
        model = make_model(0)
        config = ds_config(stage, sparse_recipe=sparse_recipe)
        config["zero_optimization"]["sub_group_size"] = 1000
        optimizer = torch.optim.AdamW(two_groups(model), lr=1e-2, weight_decay=0.05)
        engine, _, _, _, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config)
        _sparse_training(engine, sparsifier, steps)
        entry = {"rho": sparsifier.engine.method.rho, "groups": len(sparsifier.backend.optimizer.param_groups)
                 if stage != 3 else len(sparsifier.backend.flats)}
        _compare(entry, sparsifier, engine, reference_model, reference)
        if dist.get_rank() == 0:
            entry["reference_rho"] = reference.engine.method.rho
        results[f"admm_groups/{stage}"] = entry
        log("admm_groups", stage, entry)
        del engine, sparsifier


def scenario_gather(results: dict):
    """The public gather equals the test's own assembly, on every rank or on rank 0 only."""
    for stage in (0, 2, 3):
        engine, sparsifier = build(stage, "dst_ee")
        train(engine, 1, 30)
        replicated = sparsifier.backend.communicator.world_size == 1
        masks, counters = full_state(sparsifier, replicated)
        everywhere = sparsifier.gather_state(("mask", "counter"))
        on_zero = sparsifier.gather_masks(rank=0)
        shapes = {spec.name: tuple(spec.shape) for spec in sparsifier.specs}
        entry = {
            "masks_equal": all(torch.equal(everywhere[n]["mask"].reshape(-1), masks[n]) for n in masks),
            "counters_equal": all(torch.equal(everywhere[n]["counter"].reshape(-1).long(), counters[n]) for n in counters),
            "shapes_equal": all(tuple(everywhere[n]["mask"].shape) == shapes[n] for n in shapes),
            "rank0_only": (on_zero is not None) == (dist.get_rank() == 0),
        }
        flags = torch.tensor([int(value) for value in entry.values()])
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)  # every rank's findings
        results[f"gather/{stage}"] = dict(zip(entry, (bool(v) for v in flags.tolist())))
        log("gather", stage, results[f"gather/{stage}"])
        del engine, sparsifier


class NaNScoreAtStep10(gsparse.methods.RigL):
    """RigL whose grow score is NaN at the last weight of the last layer at step 10 only: that
    weight lives on the last rank, and that layer in the last step group."""

    def grow_score(self, layer):
        score = super().grow_score(layer).clone()
        if layer.step == 10 and layer.name == self.layers[-1].name:
            index = torch.arange(layer.global_start, layer.global_start + score.numel())
            score[index == self.layers[-1].numel - 1] = float("nan")
        return score


gsparse.register_method("test_nan_score_at_10", NaNScoreAtStep10, replace=True)


def scenario_nonfinite(results: dict):
    """NaN under ZeRO: a NaN loss is skipped by DeepSpeed itself (no step, so no sparse step);
    NaN scores on one rank only make every rank skip the update, as a single process does."""
    for stage in (2, 3):
        engine, sparsifier = build(stage, "rigl")
        violations = {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
        _sparse_training(engine, sparsifier, 12, invariant_checker(engine, sparsifier, violations), poison_step=10)
        metrics = sparsifier.metrics()
        results[f"nonfinite_loss/{stage}"] = {"violations": violations, "skipped_updates": metrics["skipped_updates"],
                                              "ds_skipped_steps": engine.skipped_steps, "sparse_steps": sparsifier.step}
        log("nonfinite_loss", stage, results[f"nonfinite_loss/{stage}"])
        del engine, sparsifier
    sparse_recipe = dict(recipe("rigl"), method="test_nan_score_at_10")

    def two_groups(model):
        return [{"params": [p for n, p in model.named_parameters() if not n.startswith("4.")]},
                {"params": [p for n, p in model.named_parameters() if n.startswith("4.")], "weight_decay": 0.0}]

    # two parameter groups (ZeRO-3: several sub-groups): the NaN layer steps in a group of its own
    reference_model, reference = _reference(sparse_recipe, 25, two_groups) if dist.get_rank() == 0 else (None, None)
    for stage in (2, 3):
        model = make_model(0)
        config = ds_config(stage, sparse_recipe=sparse_recipe)
        config["zero_optimization"]["sub_group_size"] = 1000
        optimizer = torch.optim.AdamW(two_groups(model), lr=1e-2, weight_decay=0.05)
        engine, _, _, _, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config)
        violations = {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
        _sparse_training(engine, sparsifier, 25, invariant_checker(engine, sparsifier, violations))
        metrics = sparsifier.metrics()
        entry = {"violations": violations, "skipped_updates": metrics["skipped_updates"],
                 "num_updates": metrics["num_updates"], "groups": len(sparsifier.backend.flats)}
        _compare(entry, sparsifier, engine, reference_model, reference)
        if dist.get_rank() == 0:
            entry["reference_skipped_updates"] = reference.metrics()["skipped_updates"]
            entry["reference_num_updates"] = reference.metrics()["num_updates"]
        results[f"nonfinite_scores/{stage}"] = entry
        log("nonfinite_scores", stage, entry)
        del engine, sparsifier

def scenario_method_cases(results: dict, workdir: Path, methods: list[str] | None):
    """Every method's equality cases (tests/method_cases/): ZeRO 0-3 against one process,
    exact counts every step, and bitwise resume from a save at ``resume_at``."""
    from tests.method_cases import load_cases

    for key, case in load_cases(methods).items():
        reference_model, reference = _reference(case.recipe, case.steps) if dist.get_rank() == 0 else (None, None)
        for stage in (0, 1, 2, 3):
            def build_case(seed=0):
                model = make_model(seed)
                return gds.initialize(model=model, optimizer=make_optimizer("adamw", model),
                                      config=ds_config(stage, sparse_recipe=case.recipe))

            engine, _, _, _, sparsifier = build_case()
            violations = {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
            _sparse_training(engine, sparsifier, case.steps, invariant_checker(engine, sparsifier, violations))
            entry = {"violations": violations, "enforces_mask": sparsifier.engine.enforces_mask,
                     "updates": sparsifier.engine.num_updates, "skipped_updates": sparsifier.engine.skipped_updates}
            _compare(entry, sparsifier, engine, reference_model, reference)
            replicated = sparsifier.backend.communicator.world_size == 1
            if case.resume_at:
                masks, counters = full_state(sparsifier, replicated)
                weights = full_weights(engine)
                del engine, sparsifier
                engine, _, _, _, sparsifier = build_case()
                _sparse_training(engine, sparsifier, case.resume_at)
                folder = workdir / f"method-{key.replace('/', '-')}-{stage}"
                engine.save_checkpoint(str(folder))
                del engine, sparsifier
                engine, _, _, _, sparsifier = build_case(seed=99)
                engine.load_checkpoint(str(folder))
                resumed_at = sparsifier.step
                for step in range(case.resume_at + 1, case.steps + 1):
                    inputs, targets = batch(step)
                    engine.backward(torch.nn.functional.cross_entropy(engine(inputs), targets))
                    engine.step()
                masks_b, counters_b = full_state(sparsifier, replicated)
                weights_b = full_weights(engine)
                entry["resume_equal"] = (resumed_at == case.resume_at
                                         and all(torch.equal(masks[n], masks_b[n]) for n in masks)
                                         and all(torch.equal(counters[n], counters_b[n]) for n in counters)
                                         and all(torch.equal(weights[n], weights_b[n]) for n in weights))
            results[f"method_cases/{key}/{stage}"] = entry
            log("method_cases", key, stage, entry)
            del engine, sparsifier


def scenario_cnn(results: dict):
    """The small ResNet (BatchNorm) on real digits images at ZeRO-2/3 against one process. Every rank
    sees the same batch, so each rank's BatchNorm statistics are those of the single process and the
    averaged gradient equals its gradient: masks must be equal and sparsity exact every step."""
    from gsparse.tasks.vision.data import load_digits_dataset
    from gsparse.tasks.vision.models import small_resnet

    images, labels = load_digits_dataset(split="train", seed=0)
    sparse_recipe = {"method": "dst_ee", "sparsity": 0.9, "distribution": "erk", "seed": 4,
                     "schedule": {"update_interval": 5, "drop_fraction": 0.4, "drop_fraction_decay": "cosine",
                                  "last_update_step": 40}, "method_args": {"c": 0.05}}
    steps = 50

    def cnn_batch(step):
        rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(step))[:32]
        return images[rows], labels[rows]

    def make():
        torch.manual_seed(0)
        return small_resnet(num_classes=10, in_channels=1, width=8)

    reference = None
    if dist.get_rank() == 0:
        model = make()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        reference = gsparse.Sparsifier(model, optimizer, sparse_recipe)
        for step in range(1, steps + 1):
            optimizer.zero_grad()
            inputs, targets = cnn_batch(step)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
        reference_model = model
    for stage in (2, 3):
        model = make()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        config = ds_config(stage, sparse_recipe=sparse_recipe)
        config["train_micro_batch_size_per_gpu"] = 32
        engine, _, _, _, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config)
        violations = {"active_count": 0, "master_nonzero": 0, "low_precision_nonzero": 0}
        checker = invariant_checker(engine, sparsifier, violations)
        for step in range(1, steps + 1):
            inputs, targets = cnn_batch(step)
            engine.backward(torch.nn.functional.cross_entropy(engine(inputs), targets))
            engine.step()
            checker(step)
        entry = {"violations": violations, "updates": sparsifier.engine.num_updates,
                 "sparse_layers": len(sparsifier.specs)}
        _compare(entry, sparsifier, engine, reference_model if reference is not None else None, reference)
        results[f"cnn/{stage}"] = entry
        log("cnn", stage, entry)
        del engine, sparsifier


def scenario_runner_export(results: dict, workdir: Path):
    """The runner at ZeRO-3 with sparse execution and export: rank 0 writes the final model from
    the gathered parameters; its CSR layer computes what the gathered dense weights compute."""
    from gsparse.export import load_compact
    from gsparse.training import RunConfig, train as run_training
    from tests.test_export import WIDE_RECIPE, _wide_task

    run_dir = workdir / "runner-export"
    zero3 = {**RUNNER_ZERO2, "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 50}}
    task = _wide_task()
    metrics = run_training(task, RunConfig(epochs=2, recipe={**WIDE_RECIPE, "execution": "sparse"},
                                           deepspeed_config=zero3, run_dir=str(run_dir), progress=False,
                                           export=True, log=lambda line: None))
    entry = {"execution": {name: value["mode"] for name, value in metrics["execution"].items()}}
    if dist.get_rank() == 0:
        folder = run_dir / "export"
        record = json.loads((folder / "export.json").read_text())
        weights = load_compact(folder / record["compact"])
        model = task.build_model()
        model.load_state_dict(weights)
        exported = torch.load(folder / "model.pt", weights_only=False)
        inputs = torch.randn(9, 12, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            difference = float((exported(inputs) - model.eval()(inputs)).abs().max())
        entry.update({"exported": [name for name, value in record["layers"].items() if value["exported"]],
                      "nonzero": {name: int(torch.count_nonzero(value)) for name, value in weights.items()},
                      "max_difference": difference, "csr": type(exported[3]).__name__})
    results["runner_export"] = entry
    log("runner_export", entry)


ELASTIC_CASES = ("1-sgd", "2-adamw", "2-sgd-bf16", "3-sgd", "3-adamw")
ELASTIC_STEPS = (20, 32)  # save after the first, compare after the second
_OPTIMIZER_KEYS = {"sgd": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq")}


def _elastic_build(case: str, seed: int = 0):
    """The small ResNet (BatchNorm) on digits with momentum SGD or AdamW at a ZeRO stage."""
    from gsparse.tasks.vision.models import small_resnet

    stage, optimizer_name, *dtype = case.split("-")
    torch.manual_seed(seed)
    model = small_resnet(num_classes=10, in_channels=1, width=8)
    optimizer = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
                 if optimizer_name == "sgd" else torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01))
    sparse_recipe = {"method": "dst_ee", "sparsity": 0.9, "distribution": "erk", "seed": 4,
                     "schedule": {"update_interval": 4, "drop_fraction": 0.3, "last_update_step": 28},
                     "method_args": {"c": 0.05}}
    config = ds_config(int(stage), sparse_recipe=sparse_recipe, dtype=dtype[0] if dtype else "fp32")
    config["train_micro_batch_size_per_gpu"] = 16
    engine, _, _, _, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config)
    return engine, sparsifier, _OPTIMIZER_KEYS[optimizer_name]


def _elastic_train(engine, first: int, last: int):
    from gsparse.tasks.vision.data import load_digits_dataset

    images, labels = load_digits_dataset(split="train", seed=0)
    dtype = next(engine.module.parameters()).dtype
    for step in range(first, last + 1):
        rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(step))[:16]
        outputs = engine(images[rows].to(dtype))
        engine.backward(torch.nn.functional.cross_entropy(outputs.float(), labels[rows]))
        engine.step()


def _elastic_snapshot(engine, sparsifier, keys) -> dict:
    """Test-only: the full fp32 weights, optimizer state, buffers and masks, through DeepSpeed's own
    accessors (not gsparse's layout)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    params = dict(engine.module.named_parameters())
    inner = engine.optimizer.optimizer
    scalars = sorted({str(value.item() if torch.is_tensor(value) else value)
                      for state in inner.state.values() for key, value in state.items() if key == "step"})
    return {"fp32": full_weights(engine),
            "optimizer": {f"{name}/{key}": safe_get_full_optimizer_state(param, key).clone()
                          for name, param in params.items() for key in keys},
            "buffers": {name: buffer.clone() for name, buffer in engine.module.named_buffers()},
            "masks": full_state(sparsifier, False)[0], "step": sparsifier.step, "optimizer_steps": scalars}


def scenario_elastic_save(results: dict, workdir: Path):
    """Save each case's checkpoint at this world size, with snapshots at the save and after more steps."""
    for case in ELASTIC_CASES:
        engine, sparsifier, keys = _elastic_build(case)
        _elastic_train(engine, 1, ELASTIC_STEPS[0])
        engine.save_checkpoint(str(workdir / f"elastic-{case}"), tag="ckpt")
        at_save = _elastic_snapshot(engine, sparsifier, keys)
        _elastic_train(engine, ELASTIC_STEPS[0] + 1, ELASTIC_STEPS[1])
        at_end = _elastic_snapshot(engine, sparsifier, keys)
        if dist.get_rank() == 0:
            torch.save({"at_save": at_save, "at_end": at_end, "world_size": dist.get_world_size()},
                       workdir / f"elastic-{case}-snapshots.pt")
        results[f"elastic_saved/{case}"] = {"files": sorted(
            str(path.relative_to(workdir / f"elastic-{case}" / "ckpt"))
            for path in (workdir / f"elastic-{case}" / "ckpt" / "gsparse" / "optimizer").iterdir())}
        del engine, sparsifier


def _differences(saved: dict, now: dict) -> dict:
    found = {}
    for part in ("fp32", "optimizer", "buffers"):
        worst = max(float((saved[part][name].double() - now[part][name].double()).abs().max()) for name in saved[part])
        found[part] = {"equal": all(torch.equal(saved[part][name], now[part][name]) for name in saved[part]),
                       "max_abs": worst, "names": sorted(saved[part]) == sorted(now[part])}
    found["masks_equal"] = all(torch.equal(saved["masks"][name], now["masks"][name]) for name in saved["masks"])
    found["step"] = [saved["step"], now["step"]]
    found["optimizer_steps"] = [saved["optimizer_steps"], now["optimizer_steps"]]
    return found


def scenario_elastic_load(results: dict, workdir: Path):
    """Load each case's checkpoint (another world size) with plain ``engine.load_checkpoint``: weights,
    optimizer state (momentum, Adam moments, steps), BatchNorm buffers and masks equal those saved;
    continuing gives the run that was never interrupted."""
    for case in ELASTIC_CASES:
        engine, sparsifier, keys = _elastic_build(case, seed=7)
        snapshots = torch.load(workdir / f"elastic-{case}-snapshots.pt", weights_only=False)
        load_path, _ = engine.load_checkpoint(str(workdir / f"elastic-{case}"), tag="ckpt")
        at_load = _elastic_snapshot(engine, sparsifier, keys)
        _elastic_train(engine, ELASTIC_STEPS[0] + 1, ELASTIC_STEPS[1])
        at_end = _elastic_snapshot(engine, sparsifier, keys)
        key = f"elastic/{snapshots['world_size']}->{dist.get_world_size()}/{case}"
        results[key] = {"loaded": load_path is not None, "at_load": _differences(snapshots["at_save"], at_load),
                        "at_end": _differences(snapshots["at_end"], at_end)}
        log("elastic", case, results[key])
        del engine, sparsifier
    # The contrast: the same continuation without the optimizer state (what DeepSpeed offers)
    case = "2-adamw"
    engine, sparsifier, keys = _elastic_build(case, seed=7)
    snapshots = torch.load(workdir / f"elastic-{case}-snapshots.pt", weights_only=False)
    engine.load_checkpoint(str(workdir / f"elastic-{case}"), tag="ckpt", load_optimizer_states=False)
    _elastic_train(engine, ELASTIC_STEPS[0] + 1, ELASTIC_STEPS[1])
    results[f"elastic/{snapshots['world_size']}->{dist.get_world_size()}/{case}/without_optimizer_state"] = \
        _differences(snapshots["at_end"], _elastic_snapshot(engine, sparsifier, keys))["fp32"]["max_abs"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenarios", required=True)
    parser.add_argument("--train-configs", default="")
    parser.add_argument("--cases", default="", help="method_cases: the tests/method_cases modules to run (default all)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    enable_cpu_fp16()
    workdir = Path(args.workdir)
    results: dict = {}
    with_workdir = {"resume": scenario_resume, "reshard_save": scenario_reshard_save,
                    "runner_save": scenario_runner_save, "runner_resume": scenario_runner_resume,
                    "runner_export": scenario_runner_export, "elastic_save": scenario_elastic_save,
                    "elastic_load": scenario_elastic_load}
    results_only = {"select": scenario_select, "fp16_overflow": scenario_fp16_overflow, "cnn": scenario_cnn,
                    "seams": scenario_seams, "admm_groups": scenario_admm_groups, "gather": scenario_gather,
                    "nonfinite": scenario_nonfinite, "refusals": scenario_refusals}
    for scenario in args.scenarios.split(","):
        if scenario == "train":
            scenario_train(results, args.train_configs.split(","))
        elif scenario == "method_cases":
            scenario_method_cases(results, workdir, args.cases.split(",") if args.cases else None)
        elif scenario.startswith("reshard_load_from_"):
            scenario_reshard_load(results, workdir, int(scenario.rsplit("_", 1)[1]))
        elif scenario in with_workdir:
            with_workdir[scenario](results, workdir)
        elif scenario in results_only:
            results_only[scenario](results)
        else:
            raise ValueError(scenario)
        dist.barrier()
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    shutdown_distributed()  # frees the engines' gloo groups while the interpreter is alive


if __name__ == "__main__":
    main()
