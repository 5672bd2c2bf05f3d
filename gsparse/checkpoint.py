"""Per-rank files of the sparse state, and loading them at any world size.

Each rank writes ``rank{r}-of-{w}.pt`` holding, per layer, the parameter name, the global start
and length of its piece, its mask and its counter. Loading at the same layout reads the rank's own
file; at another world size (or ZeRO stage) every rank streams the old files one at a time
(memory-mapped) and copies only the overlap with its own piece, so no rank ever holds more than
its own state plus one memory-mapped file.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from gsparse.engine import SparseEngine

_SHARD_NAME = re.compile(r"rank(\d+)-of-(\d+)\.pt$")


def shard_path(directory: str | Path, rank: int, world_size: int) -> Path:
    return Path(directory) / f"rank{rank:05d}-of-{world_size:05d}.pt"


def save_shard(engine: SparseEngine, directory: str | Path, rank: int, world_size: int) -> Path:
    """Write this rank's sparse state atomically (temporary file, then rename)."""
    path = shard_path(directory, rank, world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(engine.state_dict(), temporary)
    os.replace(temporary, path)
    return path


def _list_shards(directory: Path) -> list[Path]:
    shards = sorted((p for p in directory.glob("rank*-of-*.pt")), key=lambda p: int(_SHARD_NAME.search(p.name)[1]))
    if not shards:
        raise FileNotFoundError(f"no gsparse shard files (rank*-of-*.pt) in {directory}")
    world_sizes = {int(_SHARD_NAME.search(p.name)[2]) for p in shards}
    if len(world_sizes) != 1 or len(shards) != world_sizes.pop():
        raise ValueError(f"{directory} holds an incomplete or mixed set of shard files: {[p.name for p in shards]}")
    return shards


def load_shards(engine: SparseEngine, directory: str | Path, rank: int, world_size: int) -> None:
    """Restore ``engine`` from the shard files in ``directory``, resharding if the layout changed."""
    directory = Path(directory)
    own = shard_path(directory, rank, world_size)
    if own.is_file():
        state = torch.load(own, map_location="cpu", weights_only=True)
        if all(name in state["layers"] and state["layers"][name]["start"] == layer.start
               and state["layers"][name]["mask"].numel() == layer.mask.numel()
               for name, layer in ((layer.spec.name, layer) for layer in engine.layers)):
            engine.load_state_dict(state)
            return
    engine.load_state_dict(_reshard(engine, _list_shards(directory)))


def _reshard(engine: SparseEngine, shards: list[Path]) -> dict:
    pieces = {layer.spec.name: layer for layer in engine.layers}
    keys = {name: list(layer.per_weight_state()) for name, layer in pieces.items()}  # mask, counter, extras
    restored: dict[str, dict[str, torch.Tensor]] = {name: {} for name in pieces}
    covered = dict.fromkeys(pieces, 0)
    header, actives = None, {}
    for path in shards:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        header = header or {key: state.get(key) for key in ("step", "num_updates", "skipped_updates", "seed",
                                                            "active_weight_steps", "layer_active_steps",
                                                            "method_state")}
        missing = set(pieces) - set(state["layers"])
        if missing:
            raise ValueError(f"{path} has no state for sparse layers {sorted(missing)}")
        for name, layer in pieces.items():
            saved = state["layers"][name]
            if tuple(saved["shape"]) != tuple(layer.spec.shape):
                raise ValueError(f"{path}: '{name}' has shape {tuple(saved['shape'])}, the model {tuple(layer.spec.shape)}")
            actives[name] = saved["active"]
            for key in keys[name]:
                if key not in restored[name]:
                    restored[name][key] = torch.zeros(layer.mask.numel(), dtype=saved[key].dtype)
            begin = max(layer.start, saved["start"])
            end = min(layer.start + layer.mask.numel(), saved["start"] + saved["mask"].numel())
            if end <= begin:
                continue
            mine, theirs = slice(begin - layer.start, end - layer.start), slice(begin - saved["start"], end - saved["start"])
            for key in keys[name]:
                restored[name][key][mine] = saved[key][theirs]
            covered[name] += end - begin
        del state
    short = [name for name, layer in pieces.items() if covered[name] != layer.mask.numel()]
    if short:
        raise ValueError(f"the shard files do not cover this rank's piece of {short}")
    return {**header, "layers": {name: {"shape": tuple(layer.spec.shape), "start": layer.start,
                                        "active": actives[name], **restored[name]}
                                 for name, layer in pieces.items()}}
