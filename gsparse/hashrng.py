"""Counter-based random numbers keyed by global weight index.

A random score for weight ``i`` of a layer is a hash of ``(seed, purpose, layer, step, i)``, so
any rank can compute the scores of its own slice and they equal those a single process would
draw for the whole tensor. No generator state exists: resuming needs only the seed and step.
"""
from __future__ import annotations

import zlib

import torch

_MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27, so a 32-bit value times it never overflows int64


def _mix32(values: torch.Tensor) -> torch.Tensor:
    """A well-mixed 32-bit integer hash applied elementwise to int64 values in ``[0, 2**32)``."""
    values = (((values >> 16) ^ values) * _MULTIPLIER) & _MASK32
    values = (((values >> 16) ^ values) * _MULTIPLIER) & _MASK32
    return (values >> 16) ^ values


def _mix32_int(value: int) -> int:
    value &= _MASK32
    value = (((value >> 16) ^ value) * _MULTIPLIER) & _MASK32
    value = (((value >> 16) ^ value) * _MULTIPLIER) & _MASK32
    return (value >> 16) ^ value


def stream_key(seed: int, purpose: str, layer_name: str, step: int) -> int:
    """A 32-bit key naming one stream of random numbers (stable across processes and runs)."""
    key = _mix32_int(seed)
    for part in (zlib.crc32(purpose.encode()), zlib.crc32(layer_name.encode()), step, step >> 32):
        key = _mix32_int(key ^ part)
    return key


def uniform(key: int, start: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform float32 scores in ``[0, 1)`` for global indices ``start .. start + length - 1``."""
    index = torch.arange(start, start + length, dtype=torch.int64, device=device)
    hashed = _mix32((index & _MASK32) ^ key)
    hashed = _mix32(hashed ^ (index >> 32) ^ _mix32_int(key + 1))
    return (hashed >> 8).to(torch.float32) * (1.0 / (1 << 24))
