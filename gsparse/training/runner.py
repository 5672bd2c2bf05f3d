"""One training loop for any :class:`~gsparse.training.task.Task`, in plain PyTorch or under DeepSpeed.

    from gsparse.training import RunConfig, train
    metrics = train(MyTask(), RunConfig(epochs=10, recipe="recipes/rigl.yaml", run_dir="runs/mine"))

Plain PyTorch (``deepspeed_config=None``): one process; ``accumulation_steps`` micro-batches per
optimizer step, each micro-batch's loss divided by their number. Under DeepSpeed (run the script
with ``deepspeed`` or ``torchrun``): the task's model and optimizer go into
``gsparse.deepspeed.initialize`` (ZeRO 0-3, bf16/fp16 as the config says), gradient accumulation
is the config's ``gradient_accumulation_steps`` (or ``accumulation_steps`` if given), and the
task's ``batch_size`` sets ``train_micro_batch_size_per_gpu``.

Each epoch: the task's micro-batches, an optimizer step per ``accumulation_steps`` of them, then
``task.evaluate`` on each of its ``eval_splits``. The run folder gets ``log.csv`` / ``log.jsonl``
(one row per epoch: loss (mean over all micro-batches of all ranks), ``<split>_<metric>``, density, exploration degree, lr, seconds,
non-finite steps), ``updates.jsonl`` (one row per mask update), ``metrics.json`` (the evaluation
metrics of the epoch the task's ``selection_metric`` picks, plus FLOPs) and a checkpoint per
epoch (plain: ``checkpoint.pt`` written atomically; DeepSpeed: ``checkpoints/epoch<N>`` through
``engine.save_checkpoint``); ``resume=True`` continues from it bitwise.

Checkpoints are verified and belong to their run. The newest two epochs are kept (plain:
``checkpoint.pt`` and ``checkpoint.previous.pt`` listed in ``checkpoint.manifest.json``;
DeepSpeed: ``checkpoints/epoch<N>/manifest.json``), with the sha256 of every file. On resume a
checkpoint whose files do not match is logged and skipped for the previous one; none intact
raises :class:`~gsparse.checkpoint.CheckpointError`. Each records the run's fingerprint
(:func:`run_fingerprint`); a checkpoint of another method, sparsity, sparse layer set or fitted
recipe raises :class:`ResumeMismatch` before any training, as does another task/data fingerprint
unless ``resume_anyway``. The logs are cut back to the epoch resumed from, so they never repeat or
skip a row; ``metrics.json`` records ``resumed_from`` and ``optimizer_state_restored`` (false when
DeepSpeed resumed at another world size and could not repartition the ZeRO optimizer state).
A run started without ``resume`` removes the run folder's earlier checkpoints.

The recipe is fitted to the run (``Recipe.fit_to_run``: ``"N%"`` and ``auto`` become the run's
steps, and the method checks that the run reaches its target) before the model is made sparse;
the fitted values are logged and kept in ``metrics.json`` (``recipe_fitted``). After the last epoch
the sparse parameters' global density is compared with the recipe's target (one weight per layer
of slack): ``metrics.json`` gets ``target_sparsity``, ``final_sparsity`` and
``sparsity_target_met``, and a run that missed it is labelled so (``"admm (not at target: 0.412)"``).

A step whose loss is not finite is counted (and in plain PyTorch not applied: the gradients are
dropped). ``max_nonfinite_steps`` such steps in a row, or an epoch without a finite loss, raise
:class:`TrainingDiverged`; ``metrics.json`` then holds ``"status": "diverged"`` and the error,
never evaluation results.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gsparse import checkpoint
from gsparse.options import RecipeWarning
from gsparse.training.flops import UseRecorder, forward_flops, training_flops
from gsparse.training.task import RunContext, check_task
from gsparse.training.watchdog import StepWatchdog, resolve_timeout


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the message says where. No results were written."""


class ResumeMismatch(ValueError):
    """The checkpoint to resume is of another run; the message names each differing field with
    both values. Only a different task/data fingerprint can be overridden (``resume_anyway``)."""


@dataclass
class RunConfig:
    """How the runner trains a task (what to train is the task's business)."""

    epochs: int = 1
    run_dir: str = "runs/train"
    recipe: Any = None  # a gsparse recipe (path, dict); None trains dense (or the DeepSpeed config's "gsparse")
    deepspeed_config: Any = None  # a DeepSpeed JSON path or dict; None trains in one process
    accumulation_steps: int | None = None  # micro-batches per optimizer step; None: 1 (or DeepSpeed's setting)
    resume: bool = False
    # resume although the checkpoint's task/data fingerprint differs (never: method, sparsity, layers, recipe)
    resume_anyway: bool = False
    progress: bool = True  # a tqdm bar per epoch on rank 0
    max_nonfinite_steps: int = 20  # consecutive optimizer steps with a non-finite loss before giving up
    deterministic: bool = True  # torch.use_deterministic_algorithms: bitwise-repeatable runs and resumes
    count_flops: bool = True  # record layer uses on the first micro-batch (forward hooks) and report FLOPs
    log: Callable[[str], None] | None = None  # rank 0's lines; default print(..., flush=True)
    # torch threads per process; None: $GSPARSE_THREADS, else usable cores // local ranks, whatever
    # OMP_NUM_THREADS says (torchrun's default 1 would idle the cores; see resolve_threads)
    threads: int | None = None
    # seconds a training step may wait for the other ranks before the rank stops (see
    # gsparse.training.watchdog); None: $GSPARSE_COLLECTIVE_TIMEOUT, else 600
    collective_timeout: float | None = None
    # at the end, write the final model as plain PyTorch with CSR linear layers and a compact
    # file to run_dir/export/ (gsparse.export)
    export: bool = False

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, got {self.epochs!r}")
        if self.accumulation_steps is not None and (not isinstance(self.accumulation_steps, int)
                                                    or self.accumulation_steps < 1):
            raise ValueError(f"accumulation_steps: expected a positive integer, got {self.accumulation_steps!r}")
        if not isinstance(self.max_nonfinite_steps, int) or self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps: expected a positive integer, got {self.max_nonfinite_steps!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads: expected a positive integer or None, got {self.threads!r}")
        resolve_timeout(self.collective_timeout)  # a bad value (or $GSPARSE_COLLECTIVE_TIMEOUT) fails here


THREADS_ENV = "GSPARSE_THREADS"


def default_threads() -> int:
    """Usable cores (this process's CPU affinity) shared by the ranks on this machine, at least 1.
    The ranks per machine are ``$LOCAL_WORLD_SIZE`` (torchrun), else ``$LOCAL_SIZE`` (the deepspeed
    launcher), else 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = 1
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if os.environ.get(name, "").strip():
            try:
                local_ranks = max(1, int(os.environ[name]))
            except ValueError:
                pass
            break
    return max(1, cores // local_ranks)


def resolve_threads(threads: int | None = None) -> int:
    """Torch threads for this process: ``threads`` if given, else ``$GSPARSE_THREADS``, else
    :func:`default_threads`.

    ``OMP_NUM_THREADS`` is overridden by the default: torchrun sets it to 1 for every rank unless
    it is already set (with one easily missed launch notice), which would leave CPU runs on one
    core per rank. Give ``GSPARSE_THREADS`` (or ``RunConfig.threads``) to choose the count."""
    if threads is not None:
        return threads
    value = os.environ.get(THREADS_ENV)
    if value is not None and value.strip():
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"${THREADS_ENV}: expected a positive integer, got {value!r}")
        return count
    return default_threads()


class _Distributed:
    """Rank bookkeeping; a single process is rank 0 of 1."""

    def __init__(self, enabled: bool, timeout_s: float | None = None):
        self.enabled = enabled
        self.rank, self.world_size = 0, 1
        if enabled:
            import datetime

            import deepspeed
            import torch.distributed as dist

            timeout = datetime.timedelta(seconds=resolve_timeout(timeout_s))
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            # every rank has mapped the others' shared-memory buffers once all are past init: drop the
            # names now, so that a run that crashes leaves none behind either
            dist.barrier()
            _remove_deepspeed_shm_buffer(self.rank)

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mean(self, value: float, device) -> float:
        """The mean of ``value`` over ranks (a collective under DeepSpeed); not finite if any rank's is not."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.item() / self.world_size


def _load_json(config) -> dict:
    from gsparse.deepspeed.config import load_deepspeed_config

    return load_deepspeed_config(config)


def deepspeed_config_for(ds_config: dict, batch_size: int | None, world_size: int,
                         accumulation_steps: int | None, source: str = "<dict>") -> tuple[dict, int]:
    """The DeepSpeed config to initialize with and its gradient accumulation steps: the task's
    global batch split over ranks and micro-batches (``train_batch_size`` dropped).

    Precedence: the task's ``batch_size`` is the global batch; accumulation is ``accumulation_steps``
    (the run's option), else the config's ``gradient_accumulation_steps``, else 1. The config may
    repeat these but not contradict them: a ``train_batch_size`` other than ``batch_size``, a
    ``train_micro_batch_size_per_gpu`` with micro x accumulation x ranks other than ``batch_size``, or
    a ``gradient_accumulation_steps`` other than ``accumulation_steps`` raises
    :class:`~gsparse.deepspeed.DeepSpeedConfigError` (``source`` names the config) - silently
    overriding one of them would train with a batch that one of the two settings does not say."""
    from gsparse.deepspeed.config import DeepSpeedConfigError

    ds_config = dict(ds_config)
    configured = ds_config.get("gradient_accumulation_steps")
    if accumulation_steps and configured and configured != accumulation_steps:
        raise DeepSpeedConfigError(source, "gradient_accumulation_steps", f"is {configured}, but the run's "
                                   f"accumulation_steps (--accumulation_steps) is {accumulation_steps}; make them "
                                   "agree or remove one")
    accumulation = accumulation_steps or int(configured or 1)
    ds_config["gradient_accumulation_steps"] = accumulation
    if batch_size is not None:
        micro, given = ds_config.get("train_micro_batch_size_per_gpu"), ds_config.get("train_batch_size")
        for key, global_batch, how in (
                ("train_micro_batch_size_per_gpu", None if micro is None else micro * accumulation * world_size,
                 f"{micro} x gradient_accumulation_steps {accumulation} x {world_size} rank(s) = "),
                ("train_batch_size", given, "")):
            if global_batch is not None and global_batch != batch_size:
                raise DeepSpeedConfigError(source, key, f"sets a global batch of {how}{global_batch}, but the task's "
                                           f"batch_size (--batch_size) is {batch_size}; the task's batch_size sets "
                                           f"DeepSpeed's batch: make them agree or remove {key} from the config")
        if batch_size % (world_size * accumulation):
            raise ValueError(f"batch_size {batch_size} is not divisible by {world_size} rank(s) x "
                             f"{accumulation} accumulation step(s)")
        ds_config["train_micro_batch_size_per_gpu"] = batch_size // (world_size * accumulation)
        ds_config.pop("train_batch_size", None)
    return ds_config, accumulation


def _check_run_start(config: RunConfig) -> None:
    """What can fail before any data is read fails here: the run folder must be creatable and
    writable (a probe file is written and deleted), a DeepSpeed config well formed; and a DeepSpeed
    run started without a launcher becomes a single-process group (rank 0 of 1)."""
    run_dir = Path(config.run_dir)
    probe = run_dir / f".write-probe-{socket.gethostname()}-{os.getpid()}"  # unique per process on shared folders
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as error:
        raise ValueError(f"run_dir {str(run_dir)!r} cannot be created or written ({error.strerror or error}): "
                         "choose another run_dir (--run_dir)") from None
    if config.deepspeed_config is not None:
        from gsparse.deepspeed.config import ensure_process_group, load_deepspeed_config

        load_deepspeed_config(config.deepspeed_config)
        ensure_process_group(config.log or (lambda line: print(line, flush=True)))


class _Trainer:
    """Holds the model (plain or a DeepSpeed engine), its optimizer, scheduler and sparsifier."""

    def __init__(self, config: RunConfig, task, model: torch.nn.Module, total_steps: int, steps_per_epoch: int,
                 distributed: _Distributed, context: RunContext):
        self.config, self.distributed, self.context = config, distributed, context
        self.sparsifier = None
        self.monitor = None
        self.runner_state: dict = {}  # saved with every checkpoint (counters the loop keeps)
        self.fingerprint: dict = {}  # run_fingerprint(); set by train() before load / save
        self._kept = None  # the checkpoint kept as the fallback at the next save (plain: its entry; DeepSpeed: epoch)
        self.optimizer_state_restored: bool | None = None  # after a resume
        self.resume_overridden: list[str] = []  # fingerprint fields resume_anyway let differ
        self.watchdog: StepWatchdog | None = None  # bounds each micro-batch's wait for the other ranks
        recipe = config.recipe
        if distributed.enabled:
            import gsparse.deepspeed as gds

            ds_config = _load_json(config.deepspeed_config)
            if recipe is None:
                recipe = ds_config.get(gds.CONFIG_KEY)
            ds_config.pop(gds.CONFIG_KEY, None)
        if recipe is not None:
            from gsparse.recipe import load_recipe

            # "N%" and auto become this run's steps; a recipe that does not fit the run fails here
            recipe = load_recipe(recipe).fit_to_run(total_steps, steps_per_epoch)
        self.recipe = recipe
        self.optimizer = task.build_optimizer(model)
        # DeepSpeed steps this same torch optimizer inside ZeRO, so the schedule applies there too.
        self.scheduler = task.build_scheduler(self.optimizer, max(total_steps, 1))
        if distributed.enabled:
            ds_config, context.accumulation_steps = deepspeed_config_for(
                ds_config, task.batch_size, distributed.world_size, config.accumulation_steps,
                source=str(config.deepspeed_config) if not isinstance(config.deepspeed_config, dict) else "<dict>")
            if recipe is None:
                import deepspeed

                from gsparse.deepspeed.elastic import wrap_checkpointing

                self.model, *_ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=ds_config)
                wrap_checkpointing(self.model)  # optimizer state that reshards at another world size
            else:
                self.model, *_, self.sparsifier = gds.initialize(model=model, optimizer=self.optimizer,
                                                                 config=ds_config, recipe=recipe)
            monitor = getattr(self.model, "monitor", None)
            self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
            context.dtype = next(self.model.module.parameters()).dtype
            context.device = self.model.device
        else:
            context.accumulation_steps = config.accumulation_steps or 1
            self.model = model
            if recipe is not None:
                from gsparse.sparsifier import Sparsifier

                self.sparsifier = Sparsifier(model, self.optimizer, recipe)
            first = next(model.parameters(), None)
            if first is not None:
                context.dtype, context.device = first.dtype, first.device

    @property
    def module(self) -> torch.nn.Module:
        """The task's model itself (inside the DeepSpeed engine, if any)."""
        return self.model.module if self.distributed.enabled else self.model

    def backward(self, loss: torch.Tensor, finite: bool) -> None:
        if self.distributed.enabled:
            self.model.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        elif finite:
            accumulation = self.context.accumulation_steps
            (loss / accumulation if accumulation > 1 else loss).backward()

    def micro_step(self) -> None:
        """After each micro-batch under DeepSpeed (the engine steps at accumulation boundaries)."""
        if self.distributed.enabled:
            self.model.step()

    def optimizer_step(self, apply: bool) -> bool:
        """At an accumulation boundary; returns whether a real optimizer step happened."""
        if self.distributed.enabled:
            applied = self.model.was_step_applied()
        else:
            if apply:
                self.optimizer.step()
            self.optimizer.zero_grad()
            applied = apply
        if applied and self.scheduler is not None:
            self.scheduler.step()
        return applied

    def lr(self) -> float:
        if self.scheduler is not None and hasattr(self.scheduler, "get_last_lr"):
            return self.scheduler.get_last_lr()[0]
        return self.optimizer.param_groups[0]["lr"]

    def sparse_metrics(self) -> dict:
        if self.sparsifier is None:
            return {"density": 1.0, "exploration_degree": 1.0}
        metrics = self.sparsifier.metrics()
        # per-layer densities too: with global budgets, dense phases or learned thresholds they move
        return {"density": metrics["density"], "exploration_degree": metrics["exploration_degree"],
                "at_target": _target_check(self.sparsifier, metrics)["sparsity_target_met"],
                **{f"density/{name}": layer["density"] for name, layer in metrics["layers"].items()}}

    # ---- checkpoints (one per epoch; the newest two are kept, each verified before it is loaded) --

    def _client_state(self, epoch: int, history: list) -> dict:
        return {"epoch": epoch, "history": history, "runner": self.runner_state, "fingerprint": self.fingerprint,
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}

    def save(self, run_dir: Path, epoch: int, history: list) -> None:
        client_state = self._client_state(epoch, history)
        record = {"epoch": epoch, "optimizer_steps": self.runner_state.get("optimizer_steps", 0),
                  "sparse_step": None if self.sparsifier is None else self.sparsifier.step,
                  "world_size": self.distributed.world_size, "fingerprint": self.fingerprint}
        if self.distributed.enabled:
            self._save_deepspeed(run_dir / "checkpoints", epoch, client_state, record)
            return
        state = {**client_state, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "sparsifier": None if self.sparsifier is None else self.sparsifier.state_dict()}
        self._kept = checkpoint.save_plain(run_dir, state, record, keep=self._kept)

    def _save_deepspeed(self, directory: Path, epoch: int, client_state: dict, record: dict) -> None:
        """``engine.save_checkpoint`` to ``directory/epoch<N>``, then its manifest (every rank checksums a
        share of the files; the folder must be on a file system all ranks see), then the epochs before
        the previous one are removed."""
        distributed, tag = self.distributed, f"epoch{epoch}"
        folder = directory / tag
        if distributed.rank == 0 and folder.exists():
            shutil.rmtree(folder)  # of an epoch trained again after a resume from an earlier one
        distributed.barrier()
        self.model.save_checkpoint(str(directory), tag=tag, client_state=client_state)
        distributed.barrier()
        names = checkpoint.folder_files(folder)
        files: dict = {}
        for share in distributed.all_gather(checkpoint.describe_files(folder, names[distributed.rank::
                                                                                   distributed.world_size])):
            files.update(share)
        if distributed.rank == 0:
            checkpoint.write_folder_manifest(folder, {**record, "tag": tag}, files)
            for old_epoch, old_folder in checkpoint.epoch_folders(directory):
                if old_epoch not in (epoch, self._kept):
                    shutil.rmtree(old_folder)
        distributed.barrier()
        self._kept = epoch

    def load(self, run_dir: Path, log: Callable[[str], None]) -> tuple[int, list]:
        """Restore the newest intact checkpoint; returns (last finished epoch, history) or (0, []).

        Raises :class:`ResumeMismatch` when it is of another run, and
        :class:`~gsparse.checkpoint.CheckpointError` when checkpoints exist but none is intact."""
        other = (run_dir / checkpoint.PLAIN_NEWEST).is_file() if self.distributed.enabled \
            else bool(checkpoint.epoch_folders(run_dir / "checkpoints"))
        if self.distributed.enabled:
            client_state = self._load_deepspeed(run_dir / "checkpoints", log)
        else:
            client_state = self._load_plain(run_dir, log)
        if client_state is None:
            if other:
                raise checkpoint.CheckpointError(
                    f"{run_dir} holds {'a plain PyTorch' if self.distributed.enabled else 'DeepSpeed'} checkpoint, "
                    f"but this run is {'under DeepSpeed' if self.distributed.enabled else 'plain PyTorch'}: "
                    "resume it the way it was started, or use another run_dir")
            return 0, []
        if self.scheduler is not None and client_state.get("scheduler") is not None:
            self.scheduler.load_state_dict(client_state["scheduler"])
            if not self.optimizer_state_restored and hasattr(self.scheduler, "get_last_lr"):
                # a fresh optimizer holds the initial learning rates; chained schedules step from these
                for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                    group["lr"] = lr
        rng = client_state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
        self.runner_state = dict(client_state.get("runner") or {})
        return client_state["epoch"], client_state["history"]

    def _load_plain(self, run_dir: Path, log) -> dict | None:
        found = checkpoint.find_plain(run_dir, log)
        if found is None:
            return None
        path, entry = found
        if entry is not None:
            self._check_fingerprint(entry.get("fingerprint"), f"{path} (epoch {entry['epoch']})", log)
        try:
            state = torch.load(path, weights_only=False)
        except Exception as error:  # an unverified (older) file: say which one
            raise checkpoint.CheckpointError(f"{path} cannot be read: {error}") from error
        if entry is None:
            self._check_fingerprint(state.get("fingerprint"), f"{path} (epoch {state['epoch']})", log)
            entry = {"epoch": state["epoch"], **checkpoint.describe_files(run_dir, [path.name])[path.name]}
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(state["sparsifier"])
        self._kept = {**entry, "file": path.name}  # entries match by content: the name is where it is now
        self.optimizer_state_restored = True
        return state

    def _load_deepspeed(self, directory: Path, log) -> dict | None:
        distributed = self.distributed
        folders = checkpoint.epoch_folders(directory)
        if not folders:
            return None
        tag, manifest = None, None
        if not any((folder / checkpoint.MANIFEST).is_file() for _, folder in folders) \
                and (directory / "latest").is_file():
            tag = (directory / "latest").read_text().strip()
            log(f"{directory / tag}: no {checkpoint.MANIFEST} (written by an older gsparse): loaded without "
                "verification")
        else:
            problems = []
            for _, folder in folders:
                manifest, why = checkpoint.read_manifest(folder / checkpoint.MANIFEST)
                mine = [why] if manifest is None else checkpoint.folder_problems(
                    folder, manifest, sorted(manifest["files"])[distributed.rank::distributed.world_size])
                found = sorted({problem for share in distributed.all_gather(mine) for problem in share})
                if not found:
                    tag = folder.name
                    break
                problems.append(f"{folder.name}: {'; '.join(found)}")
                log(f"checkpoint {folder} is not loaded: {'; '.join(found)}")
            if tag is None:
                raise checkpoint.CheckpointError(
                    f"no intact checkpoint to resume from in {directory}: {' | '.join(problems)}. Restore the "
                    "files, or start over without resume")
            self._check_fingerprint(manifest.get("fingerprint"), f"{directory / tag} (epoch {manifest['epoch']})",
                                    log)
        engine = self.model
        saved_world = None if manifest is None else manifest.get("world_size")
        from gsparse.deepspeed import elastic

        self.optimizer_state_restored = (saved_world in (None, distributed.world_size)
                                         or not elastic.partitioned(engine)
                                         or elastic.saved_world_size(directory / tag) is not None)
        if not self.optimizer_state_restored:
            log(f"resuming on {distributed.world_size} process(es) a checkpoint saved by {saved_world} without "
                f"gsparse's optimizer pieces (an older gsparse): DeepSpeed cannot repartition "
                f"ZeRO-{engine.zero_optimization_stage()} optimizer state, so the optimizer starts afresh (momenta "
                "and second moments are lost); weights, masks, schedule and RNG are restored. Resume at "
                f"{saved_world} process(es) for an exact continuation (metrics.json: optimizer_state_restored false)")
        elif saved_world not in (None, distributed.world_size):
            log(f"resuming on {distributed.world_size} process(es) a checkpoint saved by {saved_world}: weights, "
                "optimizer state, masks, schedule and RNG resharded")
        latest = directory / "latest"
        if distributed.rank == 0 and (not latest.is_file() or latest.read_text().strip() != tag):
            (directory / "latest.tmp").write_text(tag)  # DeepSpeed's own readers (ZeRO-3 weights) follow it
            os.replace(directory / "latest.tmp", latest)
        distributed.barrier()
        load_path, client_state = engine.load_checkpoint(str(directory), tag=tag,
                                                         load_optimizer_states=self.optimizer_state_restored)
        if load_path is None:
            raise checkpoint.CheckpointError(f"DeepSpeed could not load {directory / tag}")
        if manifest is None:
            self._check_fingerprint(client_state.get("fingerprint"), str(directory / tag), log)
        self._kept = client_state["epoch"]
        return client_state

    def _check_fingerprint(self, saved: dict | None, source: str, log) -> None:
        """Raise :class:`ResumeMismatch` naming every field where ``saved`` differs from this run."""
        if saved is None:
            log(f"{source} records no run fingerprint (an older gsparse): method, sparsity and data not checked")
            return
        differences = fingerprint_differences(saved, self.fingerprint)
        if not differences:
            return
        lines = "\n".join(f"  {field}: {before} in the checkpoint, {after} in this run"
                          for field, before, after in differences)
        fixed = [field for field, _, _ in differences if not field.startswith("task")]
        if fixed or not self.config.resume_anyway:
            hint = ("resume_anyway (--resume_anyway) resumes despite a different task/data fingerprint only; "
                    if fixed else "resume_anyway=True (--resume_anyway) resumes despite it; ")
            raise ResumeMismatch(f"cannot resume from {source}: it is of another run\n{lines}\n{hint}"
                                 "or use another run_dir (or resume=False) to start this run afresh")
        self.resume_overridden = [field for field, _, _ in differences]
        log(f"WARNING: resuming from {source} despite a different task/data fingerprint (resume_anyway):\n{lines}")


def run_fingerprint(task, sparsifier) -> dict:
    """What makes a checkpoint this run's: method, target sparsity, sparse layers and shapes, the
    fitted recipe (its source with the run's steps) and its sha256 (canonical JSON; independent of
    the world size), and the task's :meth:`~gsparse.training.TaskBase.fingerprint` (default: name
    and batch size)."""
    describe = getattr(task, "fingerprint", None)
    task_print = describe() if describe is not None else {"name": task.name, "batch_size": task.batch_size}
    if sparsifier is None:
        method, sparsity, layers, source = "dense", 0.0, {}, None
    else:
        method, sparsity, source = sparsifier.recipe.method, sparsifier.recipe.sparsity, sparsifier.recipe.source
        layers = {spec.name: list(spec.shape) for spec in sparsifier.specs}
    # through JSON: what a manifest holds compares equal to what this run computes
    source = json.loads(json.dumps(source, default=_json_scalar))
    recipe_hash = None if source is None else hashlib.sha256(
        json.dumps(source, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return json.loads(json.dumps({"method": method, "sparsity": sparsity, "layers": layers, "recipe": source,
                                  "recipe_sha256": recipe_hash, "task": task_print}, default=_json_scalar))


def _json_scalar(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


_FINGERPRINT_ORDER = ("method", "sparsity", "layers", "recipe", "recipe_sha256", "task")


def fingerprint_differences(saved: dict, current: dict) -> list[tuple[str, str, str]]:
    """``(field, saved value, current value)`` for each differing field, nested dicts per leaf
    (``"layers.fc1.weight"``, ``"recipe.schedule.update_interval"``, ``"task.dataset"``); values as
    ``repr``, or "absent"."""
    differences: list = []

    def compare(field: str, before, after) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            for key in sorted(set(before) | set(after), key=str):
                compare(f"{field}.{key}", before.get(key, _ABSENT), after.get(key, _ABSENT))
        elif before != after:
            differences.append((field, _shown(before, field), _shown(after, field)))

    fields = sorted(set(saved) | set(current), key=lambda f: (_FINGERPRINT_ORDER + (f,)).index(f))
    for field in fields:
        compare(field, saved.get(field, _ABSENT), current.get(field, _ABSENT))
    return differences


_ABSENT = object()


def _shown(value, field: str) -> str:
    if value is _ABSENT:
        return "absent"
    return repr(value[:12] + "...") if field == "recipe_sha256" and isinstance(value, str) else repr(value)


def _clear_checkpoints(run_dir: Path) -> list[str]:
    """Remove the checkpoints a run folder holds (plain and DeepSpeed's); returns what was removed."""
    removed = checkpoint.clear_plain(run_dir)
    for _, folder in checkpoint.epoch_folders(run_dir / "checkpoints"):
        shutil.rmtree(folder)
        removed.append(f"checkpoints/{folder.name}")
    if (run_dir / "checkpoints" / "latest").is_file():
        (run_dir / "checkpoints" / "latest").unlink()
    return removed


def _truncate_logs(run_dir: Path, epoch: int, sparse_step: int | None) -> None:
    """Keep only the rows of epochs <= ``epoch`` in ``log.jsonl`` / ``log.csv``, and the mask updates
    up to ``sparse_step`` in ``updates.jsonl``: a resumed run then appends no duplicate and leaves
    no gap (rows written after the checkpoint it resumes from are dropped)."""
    def keep_jsonl(name: str, keep: Callable[[dict], bool]) -> None:
        path = run_dir / name
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip()]
            _write_text(path, "".join(line + "\n" for line in rows if keep(json.loads(line))))

    keep_jsonl("log.jsonl", lambda row: row["epoch"] <= epoch)
    keep_jsonl("updates.jsonl", lambda row: row["epoch"] <= epoch
               and (sparse_step is None or row["step"] <= sparse_step))
    log_csv = run_dir / "log.csv"
    if log_csv.exists():
        with log_csv.open(newline="") as source:
            rows = list(csv.reader(source))
        if rows and "epoch" in rows[0]:
            column = rows[0].index("epoch")
            rows = rows[:1] + [row for row in rows[1:] if row and int(float(row[column])) <= epoch]
            output = io.StringIO()
            csv.writer(output).writerows(rows)
            _write_text(log_csv, output.getvalue())
    for path in (run_dir / "log.jsonl", run_dir / "log.csv", run_dir / "updates.jsonl"):
        if path.exists() and epoch == 0:
            path.unlink()


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _append_update(run_dir: Path, epoch: int, metrics: dict) -> None:
    """One line per mask update in ``updates.jsonl`` (exploration degree per round)."""
    row = {"epoch": epoch, "step": metrics["step"], "update": metrics["num_updates"], "density": metrics["density"],
           "exploration_degree": metrics["exploration_degree"], "mask_change": metrics["mask_change"],
           "layer_density": {name: layer["density"] for name, layer in metrics["layers"].items()}}
    with (run_dir / "updates.jsonl").open("a") as output:
        output.write(json.dumps(row) + "\n")


def _append_log(run_dir: Path, row: dict) -> None:
    log_csv = run_dir / "log.csv"
    new_file = not log_csv.exists() or row["epoch"] == 1
    with log_csv.open("w" if new_file else "a", newline="") as output:
        writer = csv.DictWriter(output, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    with (run_dir / "log.jsonl").open("w" if new_file else "a") as output:
        output.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _unwatched(what: str):
    yield


def _best(history: list[dict], key: str, mode: str) -> dict:
    """The earliest epoch with the best ``key`` (NaN counts as worst) among the epochs that ended at
    the target sparsity, where the method has one: a prune-from-dense method's dense epochs (ADMM's
    pretraining, GMP's ramp, AC/DC's decompressed phases) are never reported as its result. When no
    epoch reached the target, every epoch is eligible (and the run is labelled as off target)."""
    def score(row):
        value = row.get(key, float("nan"))
        value = float("-inf") if value is None or math.isnan(value) else (value if mode == "max" else -value)
        return value, -row["epoch"]

    at_target = [row for row in history if row.get("at_target") is True]
    return max(at_target or history, key=score)


def train(task, config: RunConfig, extra_metrics: dict | None = None) -> dict:
    """Train ``task`` as ``config`` says; returns the metrics (also in ``run_dir/metrics.json``).

    Raises :class:`TrainingDiverged` when the loss stops being finite (``metrics.json`` then holds
    ``status: diverged``). ``extra_metrics`` are merged into ``metrics.json`` as given. Torch runs
    with :func:`resolve_threads` threads meanwhile (the caller's setting is restored afterwards)."""
    check_task(task)
    _check_run_start(config)
    threads = resolve_threads(config.threads)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    watchdog = StepWatchdog(resolve_timeout(config.collective_timeout)) if config.deepspeed_config is not None \
        else None
    try:
        return _train(task, config, extra_metrics, threads, watchdog)
    finally:
        torch.set_num_threads(previous_threads)
        if watchdog is not None:
            watchdog.close()


def _train(task, config: RunConfig, extra_metrics: dict | None, threads: int,
           watchdog: StepWatchdog | None) -> dict:
    started = time.time()
    log = config.log or (lambda line: print(line, flush=True))
    if config.deterministic:
        # Sparse products otherwise reduce in a thread-dependent order (same speed here).
        torch.use_deterministic_algorithms(True, warn_only=True)
        # ... but do not NaN-fill every torch.empty: DeepSpeed allocates large buffers each step.
        torch.utils.deterministic.fill_uninitialized_memory = False
    distributed = _Distributed(config.deepspeed_config is not None, config.collective_timeout)
    if config.recipe is not None:
        from gsparse.recipe import load_recipe

        load_recipe(config.recipe)  # a bad recipe fails before any data is read
    context = RunContext(rank=distributed.rank, world_size=distributed.world_size,
                         accumulation_steps=config.accumulation_steps or 1, distributed=distributed.enabled)
    task.setup(context)
    model = task.build_model()
    steps_per_epoch = task.steps_per_epoch()
    if steps_per_epoch < 1:
        raise ValueError(f"{task.name}: no optimizer step per epoch (steps_per_epoch() = {steps_per_epoch})")
    total_steps = steps_per_epoch * config.epochs
    trainer = _Trainer(config, task, model, total_steps, steps_per_epoch, distributed, context)
    trainer.watchdog = watchdog
    if config.export and trainer.sparsifier is not None:
        method_class = trainer.sparsifier.recipe.method_class
        if method_class.transforms_forward or not method_class.enforces_mask:
            raise ValueError(f"export: method '{method_class.name}' computes with weights transformed in forward, "
                             "so its stored weights are not the trained model; export is not supported for it")
    if watchdog is not None:
        watchdog.rank = distributed.rank
    task.prepare(trainer.model, context)
    run_dir = Path(config.run_dir)
    if distributed.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    trainer.fingerprint = run_fingerprint(task, trainer.sparsifier)
    # a checkpoint of another run, or none intact, fails here: before any file of the run changes
    first_epoch, history = trainer.load(run_dir, log if distributed.rank == 0 else lambda line: None) \
        if config.resume else (0, [])
    if distributed.rank == 0:
        removed = [] if config.resume else _clear_checkpoints(run_dir)
        if removed:
            log(f"resume is off: removed the earlier run's checkpoints in {run_dir} ({', '.join(removed)})")
        _truncate_logs(run_dir, first_epoch, trainer.sparsifier.step if first_epoch and trainer.sparsifier else None)
        if (run_dir / "metrics.json").exists():
            (run_dir / "metrics.json").unlink()  # written again when this run finishes
    sparse = trainer.sparsifier
    method = "dense" if sparse is None else sparse.recipe.method
    sparsity = 0.0 if sparse is None else sparse.recipe.sparsity
    if distributed.rank == 0:
        description = task.describe()
        log(f"{description}{'; ' if description else ''}"
            f"{'dense' if sparse is None else f'{method} at sparsity {sparsity}'}; "
            f"{distributed.world_size} process(es), {threads} thread(s) each"
            + (f", {context.accumulation_steps} micro-batches per step" if context.accumulation_steps > 1 else "")
            + (f"; resuming after epoch {first_epoch}" if first_epoch else ""))
        resolved = {} if sparse is None else sparse.recipe.fitted_to["resolved"]
        if resolved:
            log(f"recipe fitted to {total_steps:,} steps ({steps_per_epoch:,} per epoch): "
                + ", ".join(f"{key} {entry['given']} -> {entry['value']:,}" for key, entry in resolved.items()))
    state = trainer.runner_state
    state.setdefault("nonfinite_in_a_row", 0)
    state.setdefault("nonfinite_steps", 0)
    state.setdefault("optimizer_steps", 0)
    accumulation = context.accumulation_steps
    base = {"task": task.name, **task.summary(), "method": method, "sparsity": sparsity, "threads": threads,
            "resumed_from": first_epoch or None, "optimizer_state_restored": trainer.optimizer_state_restored}
    if trainer.resume_overridden:
        base["resume_overridden"] = trainer.resume_overridden
    if sparse is not None:
        base["recipe_fitted"] = _fitted_values(sparse.recipe)
    epoch = first_epoch
    try:
        for epoch in range(first_epoch + 1, config.epochs + 1):
            history.append(_train_epoch(task, trainer, context, distributed, config, run_dir, epoch,
                                        steps_per_epoch, log))
            trainer.save(run_dir, epoch, history)
    except TrainingDiverged as error:
        if distributed.rank == 0:
            checkpoint.write_json_atomic(run_dir / "metrics.json", {
                **base, "status": "diverged", "error": str(error), "epoch": epoch, "epochs": config.epochs,
                "nonfinite_steps": state["nonfinite_steps"], "world_size": distributed.world_size,
                "seconds": round(time.time() - started, 1), **(extra_metrics or {})})
            log(f"training diverged: {error}; no results written (metrics.json: status 'diverged')")
        raise
    target = {} if sparse is None else _target_check(sparse)  # a collective under DeepSpeed
    if target and target["sparsity_target_met"] is False:
        base["method"] = f"{method} (not at target: {target['final_sparsity']:.3f})"
        message = (f"{method} ended at sparsity {target['final_sparsity']:.4f}, not at its target "
                   f"{target['target_sparsity']:.4f}: metrics.json labels the run '{base['method']}'")
        if distributed.rank == 0:
            log(f"WARNING: {message}")
        warnings.warn(f"gsparse: {message}", RecipeWarning, stacklevel=2)
    best = _best(history, task.selection_metric, task.selection_mode)
    last = history[-1]
    evaluated = {key: best[key] for key in best if any(key.startswith(f"{s}_") for s in task.eval_splits)}
    final_split = task.eval_splits[-1] if task.eval_splits else None
    final = {f"final_{key}": last[key] for key in last if final_split and key.startswith(f"{final_split}_")}
    metrics = {**base, "status": "finished", "best_epoch": best["epoch"], "selection_metric": task.selection_metric,
               "best_epoch_at_target": best.get("at_target"),
               **evaluated, **final, "final_loss": last["loss"], "density": last["density"],
               "exploration_degree": last["exploration_degree"], "epochs": config.epochs,
               "world_size": distributed.world_size, "accumulation_steps": accumulation,
               "seconds": round(time.time() - started, 1), "nonfinite_steps": state["nonfinite_steps"], **target,
               **_counts(trainer, task, state, total_steps, context), **(extra_metrics or {})}
    execution = {} if sparse is None else sparse.execution_report()
    if execution:
        metrics["execution"] = execution
    if config.export:
        metrics["export"] = _export_model(trainer, task, run_dir, distributed, log)
    if distributed.rank == 0:
        if execution:
            modes = [entry["mode"] for entry in execution.values()]
            log(f"sparse execution ({sparse.recipe.execution}): {modes.count('sparse')} of {len(modes)} sparse "
                "layers ran with CSR kernels; " + "; ".join(f"{name}: {entry['mode']}"
                                                             + (f" ({entry['reason']})" if entry["reason"] else "")
                                                             for name, entry in execution.items()))
        checkpoint.write_json_atomic(run_dir / "metrics.json", metrics)
    distributed.barrier()  # every rank leaves once the results are written
    return metrics


def _export_model(trainer, task, run_dir: Path, distributed, log) -> dict | None:
    """Rank 0 writes the final model to ``run_dir/export/``: ``model.pt`` (the task's model class with
    its sparse linear layers as :class:`gsparse.export.CSRLinear`, or ``BSRLinear`` where a
    ``structure: block`` recipe's blocks tile them), the weights as a compact file (indices +
    values; safetensors when installed) and ``export.json``; returns what it wrote."""
    from gsparse.export import compact_report, export_sparse, save_compact

    module = trainer.module
    gather = contextlib.nullcontext()
    if distributed.enabled and trainer.model.zero_optimization_stage() == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gather:  # every rank takes part; rank 0 keeps a copy
        state = {key: value.detach().clone() for key, value in module.state_dict().items()} \
            if distributed.rank == 0 else None
    if distributed.rank != 0:
        return None
    model = task.build_model()  # a fresh instance: no DeepSpeed or gsparse hooks travel into the file
    model.load_state_dict({key: value for key, value in state.items() if key in model.state_dict()})
    recipe = None if trainer.sparsifier is None else trainer.sparsifier.recipe
    exported, layers = export_sparse(model, block=recipe.block_size if recipe and recipe.structure == "block" else None)
    folder = run_dir / "export"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(exported, folder / "model.pt")
    import importlib.util

    has_safetensors = importlib.util.find_spec("safetensors") is not None
    compact = save_compact(model, folder / ("model.safetensors" if has_safetensors else "model.compact.pt"))
    sizes = compact_report(model, compact)
    record = {"folder": str(folder), "model": "model.pt", "compact": compact.name, "layers": layers,
              "sizes": {**sizes, "model_bytes": (folder / "model.pt").stat().st_size}}
    checkpoint.write_json_atomic(folder / "export.json", record)
    exported_layers = [f"{name} ({entry['kernel']})" for name, entry in layers.items() if entry["exported"]]
    log(f"exported the final model to {folder}: {len(exported_layers)} sparse linear layer(s) "
        f"({', '.join(exported_layers) or 'none large and sparse enough'}); compact weights {compact.name}")
    return record


def _fitted_values(recipe) -> dict:
    """What metrics.json records of the recipe as run: the run-relative keys it resolved and the
    schedule and method options in optimizer steps."""
    return {**(recipe.fitted_to or {}), "schedule": dataclasses.asdict(recipe.schedule),
            "method_args": dict(recipe.method_args)}


def _target_check(sparse, metrics: dict | None = None) -> dict:
    """The sparse parameters' global sparsity against the recipe's (its per-layer active counts),
    with one weight per layer of slack; ``sparsity_target_met`` is None for methods without a hard
    target (``exact_target = False``: the numbers are only recorded). ``metrics``: the sparsifier's
    metrics when already gathered (gathering them is a collective under DeepSpeed)."""
    layers = (metrics or sparse.metrics())["layers"]
    numel = sum(spec.numel for spec in sparse.specs)
    target = sum(spec.active_count for spec in sparse.specs)
    active = sum(round(layers[spec.name]["density"] * spec.numel) for spec in sparse.specs)
    met = abs(active - target) <= len(sparse.specs) if sparse.engine.method.exact_target else None
    return {"target_sparsity": 1.0 - target / max(numel, 1), "final_sparsity": 1.0 - active / max(numel, 1),
            "sparsity_target_met": met}


def shutdown_distributed() -> None:
    """Leave torch.distributed cleanly: call it at the end of a launcher script.

    Without it a rank can abort at interpreter shutdown ("terminate called without an active
    exception"): DeepSpeed engines live on in reference cycles, holding gloo process groups whose
    worker threads still own finished collectives; when the garbage collector frees them during
    finalization, the thread needs the GIL to drop the tensors and is killed instead. Collecting
    the cycles and destroying the groups here, while the interpreter is alive, avoids that."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        _remove_deepspeed_shm_buffer(dist.get_rank())
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def _remove_deepspeed_shm_buffer(rank: int) -> None:
    """DeepSpeed's shared-memory all-reduce on CPU (its ``shm_comm`` op) creates
    ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (66 MB per rank) and never
    unlinks it, so every launch on another port leaves them behind until /dev/shm (RAM) is full.
    Past the final barrier every rank has long mapped the others' buffers, and a mapping outlives
    its name, so each rank unlinks its own."""
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if address and port and hasattr(os, "getuid"):
        with contextlib.suppress(OSError):
            (Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}").unlink()


def _train_epoch(task, trainer: _Trainer, context: RunContext, distributed: _Distributed, config: RunConfig,
                 run_dir: Path, epoch: int, steps_per_epoch: int, log) -> dict:
    epoch_started = time.time()
    state = trainer.runner_state
    accumulation = context.accumulation_steps
    total_loss, finite_batches, nonfinite_this_epoch = 0.0, 0, 0
    bar = None
    if config.progress and distributed.rank == 0:
        try:
            from tqdm import tqdm
        except ImportError:  # an optional dependency (the graphs extra): no bar then
            tqdm = None
    if config.progress and distributed.rank == 0 and tqdm is not None:
        # counted in examples (the task's global batch per step): the bar shows examples (images) per second
        bar = tqdm(total=steps_per_epoch * (task.batch_size or 1), desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   dynamic_ncols=True, unit="ex", unit_scale=True)
    watched = trainer.watchdog.watch if trainer.watchdog is not None else _unwatched
    micro, step_finite, steps_done = 0, True, 0
    for batch in task.train_batches(epoch, context):
        with watched(f"epoch {epoch}, micro-batch {micro + 1} (forward, backward, optimizer step)"):
            if config.count_flops and "uses" not in state:
                with UseRecorder(trainer.module) as recorder:
                    loss = task.loss(trainer.model, batch)
                state["uses"] = {name: vars(use) for name, use in recorder.uses.items()}
            else:
                loss = task.loss(trainer.model, batch)
            value = distributed.mean(loss.item(), loss.device)  # under DeepSpeed: over all ranks' micro-batches
            finite = math.isfinite(value)
            if finite:
                total_loss += value
                finite_batches += 1
            step_finite = step_finite and finite
            trainer.backward(loss, finite)
            trainer.micro_step()
            micro += 1
            if micro % accumulation:
                continue
            trainer.optimizer_step(apply=step_finite)
        steps_done += 1
        state["optimizer_steps"] += 1
        if bar is not None:
            bar.update(task.batch_size or 1)
        if step_finite:
            state["nonfinite_in_a_row"] = 0
        else:
            nonfinite_this_epoch += 1
            state["nonfinite_steps"] += 1
            state["nonfinite_in_a_row"] += 1
            if state["nonfinite_in_a_row"] >= config.max_nonfinite_steps:
                if bar is not None:
                    bar.close()
                raise TrainingDiverged(f"the loss was not finite for {state['nonfinite_in_a_row']} optimizer steps "
                                       f"in a row (epoch {epoch}, step {steps_done} of {steps_per_epoch}; "
                                       f"last loss {value})")
        step_finite = True
        sparse = trainer.sparsifier
        update = sparse.last_update if sparse is not None else None
        if update is not None and update["step"] == sparse.step and distributed.rank == 0:
            _append_update(run_dir, epoch, update["metrics"])
    if bar is not None:
        bar.close()
    if micro != steps_per_epoch * accumulation:
        raise ValueError(f"{task.name}: train_batches yielded {micro} micro-batches in epoch {epoch}; expected "
                         f"steps_per_epoch() x accumulation_steps = {steps_per_epoch} x {accumulation}")
    mean_loss = total_loss / finite_batches if finite_batches else float("nan")
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(f"epoch {epoch} ended without a finite loss ({nonfinite_this_epoch} of "
                               f"{steps_per_epoch} steps had a non-finite loss)")
    row: dict[str, Any] = {"epoch": epoch, "loss": mean_loss}
    for split in task.eval_splits:
        for key, value in task.evaluate(trainer.model, split).items():
            row[f"{split}_{key}"] = value
    row.update(trainer.sparse_metrics())
    row.update({"lr": trainer.lr(), "seconds": round(time.time() - epoch_started, 2),
                "nonfinite_steps": nonfinite_this_epoch})
    if distributed.rank == 0:
        _append_log(run_dir, row)
        shown = "  ".join(f"{key} {value:.4f}" for key, value in row.items()
                          if key not in ("epoch", "lr", "seconds", "nonfinite_steps") and isinstance(value, float))
        log(f"epoch {epoch:3d}  {shown}" + (f"  non-finite steps {nonfinite_this_epoch}" if nonfinite_this_epoch else ""))
    if trainer.monitor is not None:
        trainer.monitor.write_events([(f"epoch/{key}", float(value), epoch) for key, value in row.items()
                                      if key != "epoch" and isinstance(value, (int, float))])
    return row


def _counts(trainer: _Trainer, task, state: dict, total_steps: int, context: RunContext) -> dict:
    """Weights of the sparse layers and the others, active weights summed over steps, and FLOPs."""
    sparse = trainer.sparsifier
    engine = None if sparse is None else sparse.engine
    targets = {} if sparse is None else {spec.name: spec.active_count for spec in sparse.specs}
    from gsparse.training.flops import WeightUse

    uses = {name: WeightUse(**values) for name, values in state.get("uses", {}).items()}
    matrices = {name: use.numel for name, use in uses.items()}
    sparse_weights = 0 if sparse is None else sum(spec.numel for spec in sparse.specs)
    counts = {"total_steps": total_steps, "optimizer_steps": state["optimizer_steps"], "batch_size": task.batch_size,
              "sparse_weights": sparse_weights,
              "other_weights": sum(n for name, n in matrices.items() if name not in targets),
              "active_weight_steps": sparse_weights * total_steps if engine is None else engine.active_weight_steps,
              "num_updates": 0 if engine is None else engine.num_updates,
              "dense_gradient_updates": 0 if engine is None or not engine.method.needs_grad else engine.num_updates}
    if uses:
        layer_steps = {} if engine is None else {
            spec.name: steps for spec, steps in zip(sparse.specs, engine.layer_active_steps)}
        flops = training_flops(uses, steps=state["optimizer_steps"], calls_per_step=context.micro_batches,
                               layer_active_steps=layer_steps, sparse_steps=0 if sparse is None else sparse.step,
                               dense_gradient_updates=counts["dense_gradient_updates"],
                               dense_weight_gradient=engine is not None and not engine.enforces_mask)
        counts["training_flops"] = flops.pop("training")
        counts["flops"] = flops
        # inference: one forward call of the final model with the final masks (the DST-EE paper's Table 2)
        masks = {} if sparse is None else sparse.gather_masks()  # a collective under DeepSpeed
        counts["inference_flops"] = float(forward_flops(uses, masks))
        counts["inference_flops_relative"] = counts["inference_flops"] / max(float(forward_flops(uses)), 1.0)
        counts["training_flops_relative"] = counts["training_flops"] / max(flops["dense_training"], 1.0)
    if sparse is not None:
        counts["layer_density"] = {name: layer["density"] for name, layer in sparse.metrics()["layers"].items()}
    return counts
