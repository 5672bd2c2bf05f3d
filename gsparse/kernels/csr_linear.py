"""Masked linear layers executed with torch's CSR kernels.

The trained weight stays a dense parameter whose inactive entries are zero; only its sparsity
pattern is compiled into a :class:`CSRStructure` (rebuilt by the caller when the mask changes).
Each call of :func:`csr_linear` gathers the current values of the active entries, so the
optimizer, checkpoints and ZeRO keep seeing an ordinary dense parameter and dense gradient.

- forward ``Y = X Wᵀ + b`` as ``(W_csr · Xᵀ)ᵀ``;
- input gradient ``dX = dY W`` as ``(Wᵀ_csr · dYᵀ)ᵀ`` with the CSR of the transpose;
- weight gradient ``dYᵀ X`` sampled at the active entries only (``torch.sparse.sampled_addmm``),
  scattered into a dense tensor that is exactly zero elsewhere, or the full dense product when
  the caller needs it (RigL/DST-EE at mask-update steps).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable


class SparseKernelUnavailable(RuntimeError):
    """torch has no CSR kernel for this dtype on this device: execute the layer dense instead."""


_SUPPORT: dict[tuple[torch.dtype, str, bool], bool] = {}
_BETA_WARNING_SEEN = False


def _silence_beta_warning() -> None:
    # torch warns once per process that sparse CSR is "beta"; trigger that one warning here, muted.
    global _BETA_WARNING_SEEN
    if not _BETA_WARNING_SEEN:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                                    torch.zeros(0), (1, 1), check_invariants=False)
        _BETA_WARNING_SEEN = True


def csr_supported(dtype: torch.dtype, device: torch.device | str = "cpu", training: bool = True) -> bool:
    """Whether torch runs the CSR products :func:`csr_linear` needs for ``dtype`` on ``device``
    (``training=False``: only the forward's CSR x dense product, as an exported model needs).

    Probed once per (dtype, device type) on a tiny matrix, so it follows the installed torch
    (e.g. bf16/fp16 have no CSR kernels on CPU).
    """
    device = torch.device(device)
    key = (dtype, device.type, training)
    if key not in _SUPPORT:
        _silence_beta_warning()
        try:
            probe = torch.sparse_csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([0, 1]),
                                            torch.ones(2, dtype=dtype), (2, 2), device=device,
                                            check_invariants=False)
            dense = torch.ones(2, 3, dtype=dtype, device=device)
            torch.addmm(torch.ones(2, 3, dtype=dtype, device=device), probe, dense)
            if training:
                torch.sparse.sampled_addmm(probe, dense, dense.t(), beta=0)
            _SUPPORT[key] = dtype.is_floating_point
        except (RuntimeError, NotImplementedError):
            _SUPPORT[key] = False
    return _SUPPORT[key]


def check_csr_supported(dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
    """Raise :class:`SparseKernelUnavailable` unless :func:`csr_supported` holds."""
    if not csr_supported(dtype, device):
        raise SparseKernelUnavailable(f"torch {torch.__version__} has no CSR matrix-product kernel for {dtype} on "
                                      f"{torch.device(device).type}; execute this layer dense")


class _IndexedPattern:
    """What a sparsity pattern over a ``shape`` matrix, stored as ``flat_indices`` into the weight, says
    of itself (shared by the CSR and BSR structures)."""

    shape: tuple[int, int]
    flat_indices: torch.Tensor

    @property
    def nnz(self) -> int:
        """Active weights."""
        return self.flat_indices.numel()

    @property
    def density(self) -> float:
        numel = self.shape[0] * self.shape[1]
        return self.nnz / numel if numel else 0.0

    @property
    def device(self) -> torch.device:
        return self.flat_indices.device


@dataclass(frozen=True, eq=False)
class CSRStructure(_IndexedPattern):
    """The sparsity pattern of a ``[out, in]`` weight, as CSR of the weight and of its transpose.

    ``flat_indices[k]`` (int64) is the row-major index into ``weight`` of the k-th stored entry
    of the weight's CSR; ``t_order`` puts them in the order of the CSR of ``weight.T``
    (column-major order of the weight): ``t_flat_indices == flat_indices[t_order]``. The other
    index tensors are int32 unless the matrix is too large for it (MKL's CPU kernels take int32,
    so int64 indices would be converted on every product): 20 bytes per active weight in all.
    """

    shape: tuple[int, int]
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    flat_indices: torch.Tensor
    t_crow_indices: torch.Tensor
    t_col_indices: torch.Tensor
    t_order: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, index_dtype: torch.dtype | None = None) -> "CSRStructure":
        """Compile a bool mask ``[out, in]`` (True = active) into its CSR structure."""
        if mask.dim() != 2:
            raise ValueError(f"the mask must be 2-D [out, in], got shape {tuple(mask.shape)}")
        _silence_beta_warning()
        mask = mask.detach().bool()
        rows, columns = mask.shape
        if index_dtype is None:
            index_dtype = torch.int32 if max(rows, columns, rows * columns) < 2**31 else torch.int64
        flat = mask.reshape(-1).nonzero().squeeze(1)  # row-major = CSR order
        active_rows, active_columns = flat // columns, flat % columns
        # CSR of the transpose: the same entries ordered by column (stable: rows stay ascending)
        t_order = torch.sort(active_columns.to(index_dtype), stable=True).indices
        return cls(
            shape=(rows, columns),
            crow_indices=_row_pointers(active_rows, rows).to(index_dtype),
            col_indices=active_columns.to(index_dtype),
            flat_indices=flat,
            t_crow_indices=_row_pointers(active_columns, columns).to(index_dtype),
            t_col_indices=active_rows[t_order].to(index_dtype),
            t_order=t_order.to(index_dtype),
        )

    @property
    def t_flat_indices(self) -> torch.Tensor:
        """Row-major indices into the weight of the entries of the transpose's CSR, in its order."""
        return self.flat_indices[self.t_order.long()]

    def gather(self, weight: torch.Tensor) -> torch.Tensor:
        """The values of the active entries of ``weight`` in CSR order."""
        return weight.reshape(-1).index_select(0, self.flat_indices)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """The dense ``[out, in]`` tensor holding ``values`` (CSR order) at the active entries, 0 elsewhere."""
        dense = values.new_zeros(self.shape)  # not a view: autograd then takes it as .grad without a copy
        dense.view(-1).index_copy_(0, self.flat_indices, values)
        return dense

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse CSR ``[out, in]`` matrix with ``values`` (CSR order)."""
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, values, self.shape,
                                       check_invariants=False)

    def transposed_matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse CSR ``[in, out]`` transpose of :meth:`matrix` (same ``values``, CSR order of the weight)."""
        return torch.sparse_csr_tensor(self.t_crow_indices, self.t_col_indices, values.index_select(0, self.t_order),
                                       (self.shape[1], self.shape[0]), check_invariants=False)


def _row_pointers(row_of_entry: torch.Tensor, rows: int) -> torch.Tensor:
    pointers = torch.zeros(rows + 1, dtype=torch.int64, device=row_of_entry.device)
    torch.cumsum(torch.bincount(row_of_entry, minlength=rows), dim=0, out=pointers[1:])
    return pointers


class _SparseLinear(torch.autograd.Function):
    # Works on transposed activations: torch's sparse products want the dense operand row-major, so
    # Xᵀ is made contiguous once (free when the input is itself a transposed view, as this
    # function's outputs are) and saved for the weight gradient, whose sampled dot products read
    # rows of dYᵀ and columns of X. ``products`` (the CSR structure itself, or a BSR one of the same
    # mask) runs the forward and the input gradient; the weight gradient is always sampled with the
    # CSR structure.
    @staticmethod
    def forward(ctx, input, weight, bias, structure: CSRStructure, dense_weight_grad: bool, products):
        inputs_t = input.reshape(-1, structure.shape[1]).t().contiguous()
        matrix = products.matrix(products.gather(weight))
        if bias is None:
            output_t = torch.mm(matrix, inputs_t)
        else:
            output_t = torch.addmm(bias.unsqueeze(1), matrix, inputs_t)
        ctx.structure, ctx.products = structure, products
        ctx.dense_weight_grad, ctx.input_shape = dense_weight_grad, input.shape
        ctx.save_for_backward(inputs_t if ctx.needs_input_grad[1] else None,
                              matrix.values() if ctx.needs_input_grad[0] else None)
        return output_t.t().reshape(*input.shape[:-1], structure.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        structure: CSRStructure = ctx.structure
        inputs_t, values = ctx.saved_tensors
        grad_t = grad_output.reshape(-1, structure.shape[0]).t().contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.mm(ctx.products.transposed_matrix(values), grad_t).t().reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            if ctx.dense_weight_grad:
                grad_weight = torch.mm(grad_t, inputs_t.t())
            else:
                # zero template values: sampled_addmm propagates NaN/inf from its input even with beta=0
                template = structure.matrix(grad_t.new_zeros(structure.nnz))
                sampled = torch.sparse.sampled_addmm(template, grad_t, inputs_t.t(), beta=0)
                grad_weight = structure.scatter(sampled.values())
        if ctx.needs_input_grad[2]:
            grad_bias = grad_t.sum(1)
        return grad_input, grad_weight, grad_bias, None, None, None


def csr_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, structure: CSRStructure,
               dense_weight_grad: bool = False) -> torch.Tensor:
    """``F.linear(input, weight * mask, bias)`` executed with CSR kernels, for ``input`` of shape ``[..., in]``.

    ``weight`` is the dense ``[out, in]`` parameter; only its entries in ``structure`` are read.
    Its gradient is dense, holding ``dYᵀX`` at the active entries and exactly 0 elsewhere, or the
    full dense ``dYᵀX`` when ``dense_weight_grad`` is set. Raises :class:`SparseKernelUnavailable`
    for a dtype/device torch has no CSR kernel for (see :func:`csr_supported`).

    The output is a transposed (column-major) view, as CSR products produce it; a following
    ``csr_linear`` then needs no copy. Call ``.contiguous()`` before ``.view`` on it.
    """
    if tuple(weight.shape) != structure.shape:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not match the structure's {structure.shape}")
    check_csr_supported(weight.dtype, weight.device)
    return _SparseLinear.apply(input, weight, bias, structure, dense_weight_grad, structure)
