"""Optimizer state that follows a ZeRO checkpoint to any world size.

DeepSpeed ties a ZeRO-1/2/3 optimizer checkpoint to the world size that wrote it: loading it at
another one means dropping the optimizer state (``load_optimizer_states=False``) or converting
it offline with ``ds_to_universal.py``, which handles Adam's ``exp_avg``/``exp_avg_sq`` only
(SGD's momentum is lost), needs state only Megatron-style clients write, knows nothing of
gsparse's shards and leaves module buffers (BatchNorm statistics) as initialised.

gsparse converts as it loads instead. Next to DeepSpeed's files every rank writes
``<tag>/gsparse/optimizer/rank{r}-of-{w}.pt``: per parameter the global start and length of the
rank's piece, the piece of its fp32 master and of every per-element optimizer state (whatever the
torch optimizer keeps: ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...) and its scalar
state (``step``). A rank at another world size (or ZeRO stage) lets DeepSpeed load weights,
buffers, scheduler and client state without the optimizer state, then streams the old files one
at a time, memory-mapped, and copies the overlap with its own pieces: no rank holds more than its
own partition plus one mapped file. The cost is a second copy of the optimizer state on disk
(``elastic_checkpoints=False`` in :func:`gsparse.deepspeed.attach` turns it off).
"""
from __future__ import annotations

import glob
import inspect
import os
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from gsparse.checkpoint import list_shards, overlap, shard_path, shard_world_size
from gsparse.deepspeed.backends import (LocalPiece, partitioned_groups_layout, refresh_low_precision,
                                        stage3_layout)

OPTIMIZER_FOLDER = os.path.join("gsparse", "optimizer")
_FORMAT = 1


class ElasticLayout:
    """This rank's piece of every trained parameter inside the inner optimizer's flat fp32 tensors."""

    def __init__(self, engine):
        zero_optimizer = engine.optimizer
        self.zero_optimizer = zero_optimizer
        self.inner = zero_optimizer.optimizer
        self.group = zero_optimizer.dp_process_group
        self.rank, self.world_size = dist.get_rank(self.group), dist.get_world_size(self.group)
        if hasattr(zero_optimizer, "fp32_partitioned_groups_flat"):
            known = {id(p) for group in zero_optimizer.fp16_groups for p in group}
            layout = stage3_layout
        else:
            groups = getattr(zero_optimizer, "bit16_groups", None) or zero_optimizer.bf16_groups
            known = {id(p) for group in groups for p in group}
            layout = partitioned_groups_layout
        named = [(name, param) for name, param in engine.module.named_parameters() if id(param) in known]
        self.flats, pieces = layout(zero_optimizer, [param for _, param in named])
        self.pieces: dict[str, LocalPiece] = {name: piece for (name, _), piece in zip(named, pieces)}
        self.numels = {name: int(getattr(param, "ds_numel", param.numel())) for name, param in named}

    def view(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        piece = self.pieces[name]
        return tensor.view(-1).narrow(0, piece.offset, piece.length)

    def per_element(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {key: value for key, value in self.inner.state.get(flat, {}).items()
                if torch.is_tensor(value) and value.shape == flat.shape}

    def scalars(self, flat: torch.Tensor) -> dict:
        return {key: value for key, value in self.inner.state.get(flat, {}).items()
                if not (torch.is_tensor(value) and value.shape == flat.shape)}


def partitioned(engine) -> bool:
    """Whether ``engine``'s optimizer state is split across ranks (ZeRO-1/2/3, DeepSpeed's BF16 optimizer)."""
    return engine.zero_optimization_stage() > 0 or type(engine.optimizer).__name__ == "BF16_Optimizer"


def save_optimizer_shard(engine, folder: str | Path) -> Path | None:
    """Write this rank's optimizer pieces under ``folder/gsparse/optimizer/`` (every rank calls it;
    nothing is written where the state is replicated)."""
    if not partitioned(engine):
        return None
    layout = ElasticLayout(engine)
    params = {}
    for name, piece in layout.pieces.items():
        if piece.length == 0:
            continue
        flat = layout.flats[piece.flat]
        params[name] = {"start": piece.start, "length": piece.length, "numel": layout.numels[name],
                        "fp32": layout.view(name, flat).detach().clone(),
                        "state": {key: layout.view(name, value).clone()
                                  for key, value in layout.per_element(flat).items()},
                        "scalars": {key: value.clone() if torch.is_tensor(value) else value
                                    for key, value in layout.scalars(flat).items()}}
    path = shard_path(Path(folder) / OPTIMIZER_FOLDER, layout.rank, layout.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save({"format": _FORMAT, "world_size": layout.world_size, "params": params}, temporary)
    os.replace(temporary, path)
    return path


def saved_world_size(folder: str | Path) -> int | None:
    """The world size whose optimizer pieces ``folder`` holds, or ``None`` when it has none."""
    return shard_world_size(Path(folder) / OPTIMIZER_FOLDER)


def needs_resharding(engine, folder: str | Path) -> bool:
    """True when ``folder`` was saved by a partitioned optimizer at another world size and holds
    gsparse's optimizer pieces to reshard from."""
    saved = saved_world_size(folder)
    return (partitioned(engine) and saved is not None
            and saved != dist.get_world_size(engine.optimizer.dp_process_group))


@torch.no_grad()
def load_optimizer_shards(engine, folder: str | Path) -> None:
    """Fill this rank's fp32 masters and optimizer state from the pieces in ``folder`` (saved at any
    world size), then refresh the model's parameters from the masters."""
    layout = ElasticLayout(engine)
    covered = dict.fromkeys(layout.pieces, 0)
    scalars_of_flat: dict[int, dict] = {}
    for path in list_shards(Path(folder) / OPTIMIZER_FOLDER):
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["params"]
        for name, piece in layout.pieces.items():
            entry = saved.get(name)
            if entry is None or piece.length == 0:
                continue
            if entry["numel"] != layout.numels[name]:
                raise ValueError(f"{path}: '{name}' has {entry['numel']} elements, the model {layout.numels[name]}")
            ranges = overlap(piece.start, piece.length, entry["start"], entry["length"])
            if ranges is None:
                continue
            mine, theirs = ranges
            flat = layout.flats[piece.flat]
            layout.view(name, flat)[mine].copy_(entry["fp32"][theirs])
            state = layout.inner.state.setdefault(flat, {})
            for key, values in entry["state"].items():
                if key not in state or not torch.is_tensor(state[key]) or state[key].shape != flat.shape:
                    state[key] = torch.zeros_like(flat, dtype=values.dtype)
                layout.view(name, state[key])[mine].copy_(values[theirs])
            scalars_of_flat.setdefault(piece.flat, entry["scalars"])
            covered[name] += mine.stop - mine.start
        del saved
    short = sorted(name for name, piece in layout.pieces.items() if covered[name] != piece.length)
    if short:
        raise ValueError(f"the optimizer pieces in {Path(folder) / OPTIMIZER_FOLDER} do not cover this rank's part "
                         f"of {short}")
    for index, scalars in scalars_of_flat.items():
        state = layout.inner.state.setdefault(layout.flats[index], {})
        state.update({key: value.clone() if torch.is_tensor(value) else value for key, value in scalars.items()})
    link_state = getattr(layout.zero_optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link_state is not None:  # DeepSpeed >= 0.19 links the state after the first step; it exists now
        link_state()
    refresh_low_precision(layout.zero_optimizer)


def wrap_checkpointing(engine, save_extra: Callable[[Path], None] | None = None,
                       load_extra: Callable[[Path], None] | None = None, elastic: bool = True) -> None:
    """Make ``engine.save_checkpoint`` / ``load_checkpoint`` also save and restore gsparse's files:
    ``save_extra(folder)`` / ``load_extra(folder)`` (the sparse state) and, with ``elastic``, the
    optimizer pieces above, so that ``engine.load_checkpoint(dir)`` at another world size restores
    the optimizer state instead of failing or dropping it."""
    save_checkpoint, load_checkpoint = engine.save_checkpoint, engine.load_checkpoint
    load_signature = inspect.signature(load_checkpoint)

    def save_with_gsparse_state(save_dir, tag=None, *args, **kwargs):
        tag = str(tag) if tag is not None else f"global_step{engine.global_steps}"
        folder = Path(save_dir) / tag
        # Our files first: DeepSpeed writes 'latest' last, so a crash never points to a
        # checkpoint without them.
        if save_extra is not None:
            save_extra(folder)
        if elastic:
            save_optimizer_shard(engine, folder)
        return save_checkpoint(save_dir, tag, *args, **kwargs)

    def load_with_gsparse_state(load_dir, tag=None, *args, **kwargs):
        arguments = load_signature.bind(load_dir, tag, *args, **kwargs).arguments
        resolved = tag if tag is not None else _latest_tag(load_dir)
        reshard = (resolved is not None and arguments.get("load_optimizer_states", True)
                   and not arguments.get("load_module_only", False)
                   and needs_resharding(engine, Path(load_dir) / str(resolved)))
        if reshard:
            arguments["load_optimizer_states"] = False
            if engine.zero_optimization_stage() == 3:
                # ZeRO-3 names its model-state files by rank; a rank beyond the old world size has
                # none, and every one holds the same scheduler and client state: read rank 0's.
                engine._get_all_ckpt_names = lambda path, tag: sorted(glob.glob(engine._get_ckpt_name(
                    path, tag, mp_placeholder="*", pp_placeholder="0")))
        try:
            load_path, client_state = load_checkpoint(**arguments)
        finally:
            engine.__dict__.pop("_get_all_ckpt_names", None)
        if load_path is not None:
            folder = Path(os.path.dirname(load_path))
            if load_extra is not None:
                load_extra(folder)
            if reshard:
                load_optimizer_shards(engine, folder)
        return load_path, client_state

    engine.save_checkpoint = save_with_gsparse_state
    engine.load_checkpoint = load_with_gsparse_state


def _latest_tag(load_dir) -> str | None:
    latest = Path(load_dir) / "latest"
    return latest.read_text().strip() if latest.is_file() else None
