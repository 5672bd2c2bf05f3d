"""Masked linear layers whose masks are whole blocks (``structure: block``), executed with BSR kernels.

The forward ``Y = X Wᵀ + b`` and the input gradient ``dX = dY W`` run as block-sparse (BSR)
products of the weight and of its transpose, which torch's CPU kernels compute faster than the
CSR ones when the active weights come in blocks; the weight gradient stays the CSR structure's
(sampled at the active entries, or dense when the caller needs it), so a block layer keeps both
a :class:`BSRStructure` and a :class:`~gsparse.kernels.csr_linear.CSRStructure` of its mask.
As with CSR, only the pattern is compiled (when the mask changes); the block values are gathered
from the dense weight at every call.

MKL (torch's CPU BSR kernels) takes square blocks only: :func:`bsr_blocksize` then picks the
largest square that tiles the recipe's block (``2 x 8`` -> ``2 x 2``), or CSR where there is none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gsparse.kernels.csr_linear import (CSRStructure, SparseKernelUnavailable, _IndexedPattern, _row_pointers,
                                        _silence_beta_warning, _SparseLinear, csr_supported)

_SUPPORT: dict[tuple[torch.dtype, str, tuple[int, int], bool], bool] = {}


def bsr_supported(dtype: torch.dtype, device: torch.device | str = "cpu", blocksize: tuple[int, int] = (4, 4),
                  training: bool = True) -> bool:
    """Whether torch runs the BSR products :func:`bsr_linear` needs for ``dtype`` on ``device`` with
    ``blocksize`` blocks (``training``: also the transpose's ``(cols, rows)`` blocks and the CSR
    sampled product of the weight gradient).

    Probed once per (dtype, device type, block size) on a tiny matrix.
    """
    device = torch.device(device)
    blocksize = (int(blocksize[0]), int(blocksize[1]))
    key = (dtype, device.type, blocksize, training)
    if key not in _SUPPORT:
        _SUPPORT[key] = dtype.is_floating_point and (not training or csr_supported(dtype, device)) and all(
            _probe(dtype, device, shape) for shape in ([blocksize, blocksize[::-1]] if training else [blocksize]))
    return _SUPPORT[key]


def _probe(dtype: torch.dtype, device: torch.device, blocksize: tuple[int, int]) -> bool:
    rows, cols = blocksize
    _silence_beta_warning()
    try:
        probe = torch.sparse_bsr_tensor(torch.tensor([0, 1, 1]), torch.tensor([1]),
                                        torch.ones(1, rows, cols, dtype=dtype), (2 * rows, 2 * cols), device=device,
                                        check_invariants=False)
        torch.addmm(torch.ones(2 * rows, 3, dtype=dtype, device=device), probe,
                    torch.ones(2 * cols, 3, dtype=dtype, device=device))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def bsr_blocksize(block: tuple[int, int], dtype: torch.dtype, device: torch.device | str = "cpu",
                  training: bool = True) -> tuple[int, int] | None:
    """The BSR block size for masks made of whole ``block`` blocks: ``block`` itself where torch has
    kernels for it, else the largest square that tiles it (``gcd`` of its sides), else None (run CSR).

    A ``1 x 1`` block is no block: None."""
    square = (math.gcd(*block),) * 2
    for candidate in dict.fromkeys([tuple(block), square]):
        if candidate[0] * candidate[1] > 1 and bsr_supported(dtype, device, candidate, training):
            return candidate
    return None


def check_bsr_supported(dtype: torch.dtype, device: torch.device | str, blocksize: tuple[int, int]) -> None:
    """Raise :class:`SparseKernelUnavailable` unless :func:`bsr_supported` holds."""
    if not bsr_supported(dtype, device, blocksize):
        raise SparseKernelUnavailable(f"torch {torch.__version__} has no BSR matrix-product kernel for {dtype} with "
                                      f"{blocksize[0]} x {blocksize[1]} blocks on {torch.device(device).type}; "
                                      "execute this layer with CSR")


@dataclass(frozen=True, eq=False)
class BSRStructure(_IndexedPattern):
    """The block pattern of a ``[out, in]`` weight whose mask is whole ``blocksize`` blocks, as BSR of
    the weight (``(rows, cols)`` blocks) and of its transpose (``(cols, rows)`` blocks).

    The index tensors count blocks: ``crow_indices``/``col_indices`` over the block grid, and
    ``t_order`` puts the weight's blocks in the order of the transpose's BSR. ``flat_indices``
    (int64, one per active weight) are the row-major indices into ``weight`` of the BSR values,
    block after block, each block row-major.
    """

    shape: tuple[int, int]
    blocksize: tuple[int, int]
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    flat_indices: torch.Tensor
    t_crow_indices: torch.Tensor
    t_col_indices: torch.Tensor
    t_order: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, blocksize: tuple[int, int],
                  index_dtype: torch.dtype | None = None) -> "BSRStructure":
        """Compile a bool mask ``[out, in]`` (True = active) made of whole ``blocksize`` blocks."""
        if mask.dim() != 2:
            raise ValueError(f"the mask must be 2-D [out, in], got shape {tuple(mask.shape)}")
        rows, columns = mask.shape
        block_rows, block_cols = blocksize
        if rows % block_rows or columns % block_cols:
            raise ValueError(f"{block_rows} x {block_cols} blocks do not tile a {rows} x {columns} mask")
        _silence_beta_warning()
        grid_rows, grid_cols = rows // block_rows, columns // block_cols
        blocks = mask.detach().bool().reshape(grid_rows, block_rows, grid_cols, block_cols)
        active = blocks.any(dim=3).any(dim=1)
        if not torch.equal(active, blocks.all(dim=3).all(dim=1)):
            raise ValueError(f"the mask is not made of whole {block_rows} x {block_cols} blocks")
        if index_dtype is None:
            index_dtype = torch.int32 if max(rows, columns, rows * columns) < 2**31 else torch.int64
        flat_blocks = active.reshape(-1).nonzero().squeeze(1)  # row-major over the grid = BSR order
        active_rows, active_cols = flat_blocks // grid_cols, flat_blocks % grid_cols
        t_order = torch.sort(active_cols.to(index_dtype), stable=True).indices
        corner = active_rows * (block_rows * columns) + active_cols * block_cols  # each block's first element
        within = (torch.arange(block_rows, device=mask.device).unsqueeze(1) * columns
                  + torch.arange(block_cols, device=mask.device))
        return cls(
            shape=(rows, columns),
            blocksize=(block_rows, block_cols),
            crow_indices=_row_pointers(active_rows, grid_rows).to(index_dtype),
            col_indices=active_cols.to(index_dtype),
            flat_indices=(corner.view(-1, 1, 1) + within).reshape(-1),
            t_crow_indices=_row_pointers(active_cols, grid_cols).to(index_dtype),
            t_col_indices=active_rows[t_order].to(index_dtype),
            t_order=t_order.to(index_dtype),
        )

    @property
    def num_blocks(self) -> int:
        return self.col_indices.numel()

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """The active blocks of ``weight``, ``[blocks, rows, cols]`` in BSR order."""
        return weight.reshape(-1).index_select(0, self.flat_indices).view(-1, *self.blocksize)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse BSR ``[out, in]`` matrix with ``values`` (``[blocks, rows, cols]``, BSR order)."""
        return torch.sparse_bsr_tensor(self.crow_indices, self.col_indices, values, self.shape, check_invariants=False)

    def transposed_matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse BSR ``[in, out]`` transpose of :meth:`matrix` (same ``values``, the weight's BSR order)."""
        blocks_t = values.index_select(0, self.t_order).transpose(1, 2).contiguous()
        return torch.sparse_bsr_tensor(self.t_crow_indices, self.t_col_indices, blocks_t,
                                       (self.shape[1], self.shape[0]), check_invariants=False)


def bsr_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: BSRStructure,
               structure: CSRStructure, dense_weight_grad: bool = False) -> torch.Tensor:
    """``F.linear(input, weight * mask, bias)`` with the forward and input gradient as BSR products.

    ``blocks`` and ``structure`` are the BSR and CSR structures of the same mask; the weight
    gradient is :func:`~gsparse.kernels.csr_linear.csr_linear`'s (sampled with ``structure``, or
    the full dense product when ``dense_weight_grad`` is set). Raises
    :class:`~gsparse.kernels.csr_linear.SparseKernelUnavailable` where torch has no BSR kernel for
    the dtype, device and block size (see :func:`bsr_supported`). The output is a transposed
    (column-major) view, as with ``csr_linear``.
    """
    if not (tuple(weight.shape) == blocks.shape == structure.shape) or blocks.nnz != structure.nnz:
        raise ValueError(f"weight of shape {tuple(weight.shape)}, BSR structure of {blocks.shape} with {blocks.nnz} "
                         f"active and CSR structure of {structure.shape} with {structure.nnz}: not the same layer")
    check_bsr_supported(weight.dtype, weight.device, blocks.blocksize)
    return _SparseLinear.apply(input, weight, bias, structure, dense_weight_grad, blocks)
