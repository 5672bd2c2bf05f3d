"""Per-rank files of the sparse state, loading them at any world size, and verified checkpoints.

Each rank writes ``rank{r}-of-{w}.pt`` holding, per layer, the parameter name, the global start
and length of its piece, its mask and its counter. Loading at the same layout reads the rank's own
file; at another world size (or ZeRO stage) every rank streams the old files one at a time
(memory-mapped) and copies only the overlap with its own piece, so no rank ever holds more than
its own state plus one memory-mapped file.

The training runner's checkpoints carry manifests of sha256 checksums (:func:`save_plain`,
:func:`find_plain`, :func:`write_folder_manifest`, :func:`folder_problems`): a truncated or
corrupted checkpoint is never loaded, and the previous one is kept as a fallback.
"""
from __future__ import annotations

import hashlib
import json
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


def list_shards(directory: Path) -> list[Path]:
    """The complete set of ``rank*-of-*.pt`` files in ``directory``, in rank order."""
    shards = sorted((p for p in directory.glob("rank*-of-*.pt")), key=lambda p: int(_SHARD_NAME.search(p.name)[1]))
    if not shards:
        raise FileNotFoundError(f"no gsparse shard files (rank*-of-*.pt) in {directory}")
    world_sizes = {int(_SHARD_NAME.search(p.name)[2]) for p in shards}
    if len(world_sizes) != 1 or len(shards) != world_sizes.pop():
        raise ValueError(f"{directory} holds an incomplete or mixed set of shard files: {[p.name for p in shards]}")
    return shards


def shard_world_size(directory: str | Path) -> int | None:
    """The world size that wrote the shard files in ``directory`` (``None``: there are none)."""
    found = [_SHARD_NAME.search(p.name) for p in Path(directory).glob("rank*-of-*.pt")]
    sizes = {int(match[2]) for match in found if match}
    return max(sizes) if sizes else None


def overlap(start: int, length: int, other_start: int, other_length: int) -> tuple[slice, slice] | None:
    """Where two ranges of one flattened parameter overlap: (slice of the first, slice of the
    second), or ``None``."""
    begin, end = max(start, other_start), min(start + length, other_start + other_length)
    if end <= begin:
        return None
    return slice(begin - start, end - start), slice(begin - other_start, end - other_start)


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
    engine.load_state_dict(_reshard(engine, list_shards(directory)))


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
                                                            "method_state", "extra_state", "structure")}
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
            ranges = overlap(layer.start, layer.mask.numel(), saved["start"], saved["mask"].numel())
            if ranges is None:
                continue
            mine, theirs = ranges
            for key in keys[name]:
                restored[name][key][mine] = saved[key][theirs]
            covered[name] += mine.stop - mine.start
        del state
    short = [name for name, layer in pieces.items() if covered[name] != layer.mask.numel()]
    if short:
        raise ValueError(f"the shard files do not cover this rank's piece of {short}")
    return {**header, "layers": {name: {"shape": tuple(layer.spec.shape), "start": layer.start,
                                        "active": actives[name], **restored[name]}
                                 for name, layer in pieces.items()}}


# ---- verified checkpoints: manifests of sha256 checksums -------------------------------------------
#
# A checkpoint is loaded only when every file matches the checksums recorded when it was written.
# Plain PyTorch runs keep ``checkpoint.pt`` (newest) and ``checkpoint.previous.pt`` (the fallback),
# described by ``checkpoint.manifest.json``; DeepSpeed runs keep their two newest tag folders
# ``checkpoints/epoch<N>/``, each with its own ``manifest.json``.

MANIFEST = "manifest.json"
PLAIN_NEWEST, PLAIN_PREVIOUS, PLAIN_MANIFEST = "checkpoint.pt", "checkpoint.previous.pt", "checkpoint.manifest.json"
_PLAIN_TEMPORARY = "checkpoint.pt.tmp"
_EPOCH_FOLDER = re.compile(r"epoch(\d+)$")
_FORMAT = 1


class CheckpointError(ValueError):
    """No intact checkpoint to resume from; the message names the run folder and what was found
    (a ValueError: the task command lines report it as a usage error, without a traceback)."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: str | Path, names: list[str]) -> dict[str, dict]:
    """``{name: {"sha256", "bytes"}}`` of the files ``names`` (relative to ``root``)."""
    root = Path(root)
    return {name: {"sha256": file_sha256(root / name), "bytes": (root / name).stat().st_size} for name in names}


def file_problem(path: Path, expected: dict) -> str | None:
    """Why ``path`` is not the file ``expected`` describes (missing, another size, another checksum), or None."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"{size} bytes, the manifest records {expected['bytes']} (truncated or rewritten)"
    if file_sha256(path) != expected["sha256"]:
        return "sha256 checksum mismatch (corrupted)"
    return None


def write_json_atomic(path: str | Path, values: dict, sort_keys: bool = False) -> None:
    """Write ``values`` as JSON to a temporary file, sync it, then rename it over ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as output:
        output.write(json.dumps(values, indent=1, sort_keys=sort_keys, default=str))
        output.flush()
        os.fsync(output.fileno())
    os.replace(temporary, path)


def read_manifest(path: str | Path) -> tuple[dict | None, str | None]:
    """(manifest, None), or (None, why it cannot be used)."""
    path = Path(path)
    if not path.is_file():
        return None, f"no {path.name} (its save did not finish)"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"{path.name} unreadable ({error})"
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        return None, f"{path.name} is not a gsparse checkpoint manifest (format {_FORMAT})"
    return manifest, None


# ---- plain PyTorch: checkpoint.pt and checkpoint.previous.pt ----------------------------------------


def save_plain(run_dir: str | Path, state: dict, record: dict, keep: dict | None) -> dict:
    """Write ``state`` as ``run_dir/checkpoint.pt`` and return its manifest entry (``record`` plus
    file, sha256, bytes).

    ``keep``: the entry of the checkpoint to keep as the fallback (the one saved or loaded last;
    it becomes ``checkpoint.previous.pt``), or None to keep none. The manifest lists every
    checkpoint that may be on disk at each moment, and entries are matched by content, so a run
    killed anywhere in between still finds an intact checkpoint."""
    run_dir = Path(run_dir)
    newest, previous, temporary = run_dir / PLAIN_NEWEST, run_dir / PLAIN_PREVIOUS, run_dir / _PLAIN_TEMPORARY
    with open(temporary, "wb") as output:
        torch.save(state, output)
        output.flush()
        os.fsync(output.fileno())
    entry = {**record, "file": PLAIN_NEWEST, **describe_files(run_dir, [temporary.name])[temporary.name]}
    manifest, _ = read_manifest(run_dir / PLAIN_MANIFEST)
    listed = (manifest or {}).get("checkpoints", [])
    write_json_atomic(run_dir / PLAIN_MANIFEST, {"format": _FORMAT, "checkpoints": listed + [entry]}, sort_keys=True)
    kept = None
    if keep is not None and keep["file"] == PLAIN_NEWEST and newest.is_file():
        os.replace(newest, previous)
        kept = {**keep, "file": PLAIN_PREVIOUS}
    elif keep is not None and keep["file"] == PLAIN_PREVIOUS and previous.is_file():
        kept = keep
    os.replace(temporary, newest)
    write_json_atomic(run_dir / PLAIN_MANIFEST, {"format": _FORMAT, "checkpoints": [e for e in (kept, entry) if e]},
                      sort_keys=True)
    if kept is None and previous.exists():
        previous.unlink()  # an earlier run's, or not intact
    return entry


def find_plain(run_dir: str | Path, log) -> tuple[Path, dict | None] | None:
    """The newest intact plain checkpoint as (path, its manifest entry), None when there is none
    at all; a file that fails its check is logged and skipped. A ``checkpoint.pt`` without a
    manifest (an older gsparse's) is returned unverified with entry None. Raises
    :class:`CheckpointError` when checkpoints exist but none is intact."""
    run_dir = Path(run_dir)
    candidates = [run_dir / name for name in (PLAIN_NEWEST, PLAIN_PREVIOUS) if (run_dir / name).is_file()]
    if not candidates:
        return None
    manifest, why = read_manifest(run_dir / PLAIN_MANIFEST)
    if manifest is None and not (run_dir / PLAIN_MANIFEST).exists():
        log(f"{candidates[0]}: no {PLAIN_MANIFEST} (written by an older gsparse): loaded without verification")
        return candidates[0], None
    problems = []
    for path in candidates:
        if manifest is None:
            problem = why
        else:
            entries = manifest.get("checkpoints", [])
            sized = [e for e in entries if e["bytes"] == path.stat().st_size]
            if not sized:
                problem = (f"{path.stat().st_size} bytes, the manifest records "
                           f"{' or '.join(str(e['bytes']) for e in entries) or 'no checkpoint'} (truncated or rewritten)")
            else:
                digest = file_sha256(path)
                match = next((e for e in sized if e["sha256"] == digest), None)
                if match is not None:
                    return path, match
                problem = "sha256 checksum mismatch (corrupted)"
        problems.append(f"{path.name}: {problem}")
        log(f"checkpoint {path} is not loaded: {problem}")
    raise CheckpointError(f"no intact checkpoint to resume from in {run_dir}: {'; '.join(problems)}. Restore the "
                          "files, or start over without resume")


def clear_plain(run_dir: str | Path) -> list[str]:
    """Remove a run folder's plain checkpoints and manifest; returns the names removed."""
    run_dir = Path(run_dir)
    removed = []
    for name in (PLAIN_NEWEST, PLAIN_PREVIOUS, PLAIN_MANIFEST, _PLAIN_TEMPORARY):
        if (run_dir / name).exists():
            (run_dir / name).unlink()
            removed.append(name)
    return removed


# ---- folders of files (DeepSpeed tags): checkpoints/epoch<N>/manifest.json --------------------------


def epoch_folders(directory: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, folder)`` of every ``epoch<N>`` folder in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match[1]), path) for path in directory.iterdir()
             if path.is_dir() and (match := _EPOCH_FOLDER.match(path.name))]
    return sorted(found, reverse=True)


def folder_files(folder: str | Path) -> list[str]:
    """Every file under ``folder`` (relative, sorted), its manifest excluded."""
    folder = Path(folder)
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and path.name != MANIFEST)


def write_folder_manifest(folder: str | Path, record: dict, files: dict[str, dict]) -> None:
    write_json_atomic(Path(folder) / MANIFEST, {"format": _FORMAT, **record, "files": files}, sort_keys=True)


def folder_problems(folder: str | Path, manifest: dict, names: list[str]) -> list[str]:
    """What is wrong with the files ``names`` of the manifest (``"name: why"``); empty when intact."""
    folder = Path(folder)
    problems = []
    for name in names:
        problem = file_problem(folder / name, manifest["files"][name])
        if problem:
            problems.append(f"{name}: {problem}")
    return problems
