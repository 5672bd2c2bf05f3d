"""Per layer, whether CSR execution pays: a one-time, cached micro-benchmark.

:func:`choose_execution` times one training pass (forward + backward with the sampled weight
gradient) of the masked dense layer against :func:`~gsparse.kernels.csr_linear.csr_linear` (or,
for a mask of whole blocks, :func:`~gsparse.kernels.bsr_linear.bsr_linear`: the kernel the layer
will run) on random data of the layer's shape, density, block size and batch, interleaving the two
and taking the median of the rounds. The rule is fixed: sparse only when ``dense_ms >= SPEEDUP_MARGIN * sparse_ms``
(at least 10% faster), so timing noise around break-even keeps the layer dense.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from gsparse.kernels.bsr_linear import BSRStructure, bsr_linear, bsr_supported
from gsparse.kernels.csr_linear import CSRStructure, csr_linear, csr_supported

logger = logging.getLogger(__name__)

SPEEDUP_MARGIN = 1.10
TIMING_BUDGET_S = 0.15  # timed rounds per choice, after one warm-up round of each
MAX_REPEATS = 25

Step = Callable[[], None]
Timer = Callable[[Step, Step, "int | None"], "tuple[float, float]"]


@dataclass(frozen=True)
class ExecutionChoice:
    """How to execute one masked layer: ``mode`` is "sparse" or "dense"; the timings (ms per
    forward + backward) are None when no benchmark ran."""

    mode: str
    dense_ms: float | None
    sparse_ms: float | None
    reason: str


_CACHE: dict[tuple, ExecutionChoice] = {}


def clear_choice_cache() -> None:
    """Forget every cached choice (the next :func:`choose_execution` benchmarks again)."""
    _CACHE.clear()


def decide(dense_ms: float, sparse_ms: float, margin: float = SPEEDUP_MARGIN) -> ExecutionChoice:
    """The rule: sparse iff ``dense_ms >= margin * sparse_ms``."""
    speedup = dense_ms / sparse_ms if sparse_ms > 0 else math.inf
    if speedup >= margin:
        return ExecutionChoice("sparse", dense_ms, sparse_ms, f"sparse {speedup:.2f}x faster (>= {margin:.2f}x needed)")
    return ExecutionChoice("dense", dense_ms, sparse_ms, f"sparse only {speedup:.2f}x as fast (< {margin:.2f}x needed)")


def paired_timing(dense_step: Step, sparse_step: Step, repeats: int | None = None) -> tuple[float, float]:
    """Median ms of ``dense_step`` and ``sparse_step`` over interleaved rounds, after one warm-up
    round; ``repeats=None`` fits the rounds in :data:`TIMING_BUDGET_S` (1 to :data:`MAX_REPEATS`)."""
    warm = _time_ms(dense_step) + _time_ms(sparse_step)
    if repeats is None:
        repeats = int(min(MAX_REPEATS, max(1, TIMING_BUDGET_S * 1e3 // max(warm, 1e-3))))
    dense, sparse = [], []
    for _ in range(repeats):
        dense.append(_time_ms(dense_step))
        sparse.append(_time_ms(sparse_step))
    return statistics.median(dense), statistics.median(sparse)


def _time_ms(step: Step) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def _cache_key(out_features, in_features, nnz, batch_rows, dtype, device, block) -> tuple:
    # quarter-octave density buckets (~19% apart) and power-of-two batch buckets
    numel = out_features * in_features
    density_bucket = round(4 * math.log2(nnz / numel)) if nnz else None
    batch_bucket = round(math.log2(batch_rows)) if batch_rows else None
    return (out_features, in_features, density_bucket, batch_bucket, dtype, torch.device(device).type, block)


def choose_execution(out_features: int, in_features: int, nnz: int, batch_rows: int,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                     repeats: int | None = None, timer: Timer = paired_timing,
                     block: tuple[int, int] | None = None) -> ExecutionChoice:
    """Sparse or dense execution for a masked linear layer ``[out_features, in_features]`` with
    ``nnz`` active weights, fed ``batch_rows`` input rows per step (the product of its leading dims).
    ``block``: the layer runs :func:`~gsparse.kernels.bsr_linear.bsr_linear` with these BSR blocks
    (its mask is whole blocks), timed so; where torch has no BSR kernel for them, CSR is timed.

    Cached per (shape, density bucket, batch bucket, dtype, device type, block); ``timer(dense_step,
    sparse_step, repeats) -> (dense_ms, sparse_ms)`` measures (injectable for tests).
    """
    device = torch.device(device)
    if block is not None:
        block = (int(block[0]), int(block[1]))
        if out_features % block[0] or in_features % block[1] or not bsr_supported(dtype, device, block):
            block = None
    key = _cache_key(out_features, in_features, nnz, batch_rows, dtype, device, block)
    if key in _CACHE:
        return _CACHE[key]
    if not csr_supported(dtype, device):
        choice = ExecutionChoice("dense", None, None, f"no CSR kernel for {dtype} on {device.type}")
    elif nnz >= out_features * in_features:
        choice = ExecutionChoice("dense", None, None, "every weight is active")
    elif batch_rows == 0:
        choice = ExecutionChoice("dense", None, None, "no input rows to measure")
    else:
        choice = decide(*timer(*_training_steps(out_features, in_features, nnz, batch_rows, dtype, device, block),
                               repeats))
    kernel = "CSR" if block is None else f"BSR {block[0]}x{block[1]}"
    logger.info("layer %dx%d, %d active, %d rows, %s on %s, %s: %s (%s)", out_features, in_features, nnz, batch_rows,
                dtype, device.type, kernel, choice.mode, choice.reason)
    _CACHE[key] = choice
    return choice


def _training_steps(out_features, in_features, nnz, batch_rows, dtype, device, block=None) -> tuple[Step, Step]:
    """Forward + backward of the masked dense layer (gradient re-masked) and of ``csr_linear``
    (``bsr_linear`` with ``block`` blocks; sampled gradient), on seeded random data; the mask has
    about ``nnz`` active entries (whole random blocks with ``block``)."""
    generator = torch.Generator().manual_seed(0)

    def random(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    uniform = torch.rand(out_features, in_features, generator=generator)
    mask = uniform < nnz / (out_features * in_features)
    if block is not None:  # each block active with the layer's density
        grid = torch.rand(out_features // block[0], in_features // block[1], generator=generator) < nnz / uniform.numel()
        mask = grid.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    weight = (uniform * mask).to(device=device, dtype=dtype).requires_grad_()  # the values do not matter
    mask = mask.to(device)
    bias = random(out_features).requires_grad_()
    inputs = random(batch_rows, in_features).requires_grad_()
    grad_output = random(batch_rows, out_features)
    structure = CSRStructure.from_mask(mask)
    blocks = None if block is None else BSRStructure.from_mask(mask, block)

    def synchronized(step: Step) -> Step:
        if device.type != "cuda":
            return step
        return lambda: (step(), torch.cuda.synchronize(device))

    mask_bytes = mask.view(torch.uint8)  # multiplying by it is how gsparse masks gradients on CPU

    def dense_step():
        F.linear(inputs, weight, bias).backward(grad_output)
        weight.grad.mul_(mask_bytes)
        weight.grad = bias.grad = inputs.grad = None

    def sparse_step():  # .contiguous() as in sparse execution (gsparse.kernels.execution): its cost counts
        output = csr_linear(inputs, weight, bias, structure) if blocks is None else \
            bsr_linear(inputs, weight, bias, blocks, structure)
        output.contiguous().backward(grad_output)
        weight.grad = bias.grad = inputs.grad = None

    return synchronized(dense_step), synchronized(sparse_step)
