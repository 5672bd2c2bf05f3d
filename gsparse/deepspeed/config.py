"""DeepSpeed configs and the launch environment, checked before DeepSpeed builds anything.

:func:`load_deepspeed_config` reads a config (a JSON path, a dict, or base64 JSON as DeepSpeed
accepts) and refuses a malformed file or a section of the wrong shape with one
:class:`DeepSpeedConfigError` naming the file, the key path and what is expected, instead of a
traceback from inside DeepSpeed. :func:`ensure_process_group` lets a script started without a
launcher run as one rank.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Mapping

logger = logging.getLogger(__name__)

DICT_SOURCE = "<dict>"
# Set by torchrun, the deepspeed launcher or mpirun (Open MPI); without any, there is no launcher.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK")

# Sections that DeepSpeed reads as mappings (a scalar there fails deep inside DeepSpeed or gsparse).
_MAPPINGS = ("zero_optimization", "zero_optimization.offload_optimizer", "zero_optimization.offload_param",
             "bf16", "fp16", "amp", "optimizer", "optimizer.params", "scheduler", "scheduler.params",
             "activation_checkpointing", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comms_logger",
             "checkpoint", "aio", "data_types")
_EXAMPLES = {"zero_optimization": '{"stage": 2}', "zero_optimization.offload_optimizer": '{"device": "none"}',
             "zero_optimization.offload_param": '{"device": "none"}', "bf16": '{"enabled": true}',
             "fp16": '{"enabled": true}'}
_POSITIVE_INTEGERS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
_BOOLEANS = ("bf16.enabled", "fp16.enabled")


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config that cannot be used; the message names the file (or ``<dict>``), the key
    path and what is expected."""

    def __init__(self, source: str, key: str | None, problem: str):
        self.source, self.key = source, key
        super().__init__(f"DeepSpeed config {source}: " + (f"'{key}' " if key else "") + problem)


def load_deepspeed_config(config: str | os.PathLike | Mapping[str, Any]) -> dict:
    """The config as a dict (a copy), after checking its shape; see :class:`DeepSpeedConfigError`."""
    if isinstance(config, Mapping):
        source, data = DICT_SOURCE, dict(config)
    elif isinstance(config, (str, os.PathLike)):
        source, data = str(config), _read(config)
    else:
        raise DeepSpeedConfigError(repr(config), None, "expected a JSON file path or a dict, "
                                                       f"got {type(config).__name__}")
    check_shape(data, source)
    return data


def config_source(config: Any) -> str:
    """How errors name ``config``: its path, or ``<dict>``."""
    return str(config) if isinstance(config, (str, os.PathLike)) else DICT_SOURCE


def check_shape(data: Any, source: str = DICT_SOURCE) -> None:
    """Refuse sections of the wrong type (e.g. ``"zero_optimization": 2``, ``"bf16": true``)."""
    if not isinstance(data, Mapping):
        raise DeepSpeedConfigError(source, None, f"expected a JSON object of DeepSpeed keys, got {data!r}")
    for key in _MAPPINGS:
        present, value = _lookup(data, key)
        if present and not isinstance(value, Mapping):
            example = f" such as {_EXAMPLES[key]}" if key in _EXAMPLES else ""
            raise DeepSpeedConfigError(source, key, f"expected a mapping{example}, got {value!r}")
    present, stage = _lookup(data, "zero_optimization.stage")
    if present and (isinstance(stage, bool) or stage not in (0, 1, 2, 3)):
        raise DeepSpeedConfigError(source, "zero_optimization.stage", f"expected 0, 1, 2 or 3, got {stage!r}")
    for key in ("zero_optimization.offload_optimizer.device", "zero_optimization.offload_param.device"):
        present, device = _lookup(data, key)
        if present and device is not None and not isinstance(device, str):
            raise DeepSpeedConfigError(source, key, f"expected a device name ('none', 'cpu', 'nvme'), got {device!r}")
    for key in _POSITIVE_INTEGERS:
        present, value = _lookup(data, key)
        if present and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DeepSpeedConfigError(source, key, f"expected a positive integer, got {value!r}")
    for key in _BOOLEANS:
        present, value = _lookup(data, key)
        if present and not isinstance(value, bool):
            raise DeepSpeedConfigError(source, key, f"expected true or false, got {value!r}")


def ensure_process_group(log: Callable[[str], None] | None = None) -> bool:
    """Without a launcher (none of :data:`LAUNCHER_VARIABLES` set) and no process group yet, start
    a single-process one (rank 0 of 1 on 127.0.0.1, a free port; gloo, or nccl on a GPU), so that
    ``python script.py --deepspeed_config ...`` runs as one rank instead of DeepSpeed falling back to
    MPI discovery (mpi4py). Returns whether it started one."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized() or any(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        return False
    port = _free_port()
    # DeepSpeed reads these too: with them set it does not look for MPI.
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    (log or logger.warning)(f"gsparse: no launcher environment ({', '.join(LAUNCHER_VARIABLES)} unset): running "
                            f"DeepSpeed as a single process (rank 0 of 1, {backend} on 127.0.0.1:{port})")
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read(path: str | os.PathLike) -> dict:
    source = str(path)
    file = Path(path)
    try:
        is_file = file.is_file()
    except OSError:  # e.g. a name too long to be a path (it may still be base64 JSON)
        is_file = False
    if not is_file:
        decoded = _base64_json(source) if isinstance(path, str) else None
        if decoded is not None:
            return decoded
        what = "is a directory, not a JSON file" if _is_dir(file) else "no such file"
        raise DeepSpeedConfigError(source, None, what)
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DeepSpeedConfigError(source, None, f"cannot be read: {error}") from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as error:
        raise DeepSpeedConfigError(source, None, f"line {error.lineno}, column {error.colno}: not valid JSON: "
                                                 f"{error.msg}") from None
    except RecursionError:
        raise DeepSpeedConfigError(source, None, "nested too deeply to be a DeepSpeed config") from None
    except _DuplicateKey as duplicate:
        raise DeepSpeedConfigError(source, duplicate.key, "is given twice in one object (DeepSpeed refuses "
                                                          "duplicate keys); keep one") from None


def _is_dir(file: Path) -> bool:
    try:
        return file.is_dir()
    except OSError:
        return False


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    values: dict = {}
    for key, value in pairs:
        if key in values:
            raise _DuplicateKey(key)
        values[key] = value
    return values


def _base64_json(text: str) -> dict | None:
    """DeepSpeed also takes a config as base64-encoded JSON (as its launcher may pass it)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(text.encode()).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeError):
        return None
    return data if isinstance(data, dict) else None


def _lookup(data: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """``(present, value)`` of a dotted key path; absent when a parent is not a mapping."""
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value
