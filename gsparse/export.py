"""Export a trained sparse model for inference.

* :class:`CSRLinear` runs a linear layer with its weight as a sparse CSR tensor (torch's own CSR
  kernels: on this CPU a 2048x2048 layer at 5% density is ~4x faster than dense, a 128x16 one slower).
* :class:`BSRLinear` holds the weight as square BSR blocks: for block masks (``structure: block``)
  ~1.2-1.5x faster than CSR on this CPU (docs/benchmarks.md, "Block masks").
* :func:`export_sparse` copies a model with its large, sparse-enough linear layers replaced by
  ``CSRLinear`` (or ``BSRLinear``, given the mask's block size); the copy is plain PyTorch
  (``torch.save``/``torch.load``, ``torch.jit.script`` once BSR layers are CSR: :func:`with_csr_layers`)
  and needs neither DeepSpeed nor gsparse's training code.
* :func:`save_compact` / :func:`load_compact` store a state dict with its sparse weights as CSR
  pieces (safetensors when installed, else a ``.pt`` with the same layout), loaded back bit-exact.

Only torch and the standard library are imported here; ``safetensors`` is imported when used.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import torch

from gsparse.kernels.bsr_linear import bsr_blocksize, bsr_supported
from gsparse.kernels.csr_linear import csr_supported

PYG_LINEAR = ("torch_geometric.nn.dense.linear", "Linear")  # its forward is F.linear(x, weight, bias)
COMPACT_FORMAT = "gsparse-compact"
COMPACT_VERSION = 1
CSR_PIECES = ("crow_indices", "col_indices", "values")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's files are zip archives; safetensors' start with a header length


# ---- CSR linear layer --------------------------------------------------------------------------

def csr_kernel_available(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether torch has a CSR x dense matrix product for ``dtype`` on ``device``."""
    return csr_supported(dtype, device, training=False)


def csr_from_dense(weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s nonzero entries as a CSR tensor, with int32 indices when they fit."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        csr = weight.detach().to_sparse_csr()
    crow, col = csr.crow_indices(), csr.col_indices()
    if max(csr.values().numel(), weight.shape[1]) < 2**31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)  # a little faster in MKL, half the bytes
    return torch.sparse_csr_tensor(crow, col, csr.values(), csr.shape, check_invariants=False)


class _SparseWeightLinear(torch.nn.Module):
    """What :class:`CSRLinear` and :class:`BSRLinear` share: the buffers, forward, deepcopy and
    ``load_state_dict``. A subclass says how a weight becomes its sparse layout (``_sparse_weight``)."""

    __jit_unused_properties__ = ["nnz", "density", "num_blocks", "fill"]  # TorchScript infers int attributes

    def _register(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.register_buffer("weight", self._sparse_weight(weight.detach()))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def _sparse_weight(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def nnz(self) -> int:
        """Stored weight entries (with BSR, every entry of every stored block)."""
        return int(self.weight.values().numel())

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.in_features * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        # sparse x dense is torch's fast sparse product (dense x sparse is ~5x slower); making the
        # transposed result contiguous costs ~5% and keeps ``.view`` working as after nn.Linear
        if self.bias is None:
            out = torch.mm(self.weight, rows.t())
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, rows.t())
        return out.t().contiguous().reshape(list(x.shape[:-1]) + [self.out_features])

    def __deepcopy__(self, memo):
        # torch cannot deepcopy sparse CSR/BSR tensors (no storage to copy); clone them instead
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            if key == "_buffers":
                clone.__dict__[key] = {name: tensor.clone() if tensor is not None and tensor.layout != torch.strided
                                       else copy.deepcopy(tensor, memo) for name, tensor in value.items()}
            else:
                clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # the default copies in place, which sparse tensors allow only for the same number of entries
        for name in ("weight", "bias"):
            current, key = self._buffers[name], prefix + name
            if current is None:
                if key in state_dict and state_dict[key] is not None and strict:
                    unexpected_keys.append(key)
                continue
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if value.shape != current.shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} "
                                  f"from checkpoint, the shape in current model is {tuple(current.shape)}.")
                continue
            value = value.detach().to(device=current.device, dtype=current.dtype)
            if name == "weight":
                self._buffers[name] = self._sparse_weight(value)
            else:
                with torch.no_grad():
                    current.copy_(value)
        if strict:
            unexpected_keys.extend(key for key in state_dict if key.startswith(prefix)
                                   and "." not in key[len(prefix):] and key[len(prefix):] not in ("weight", "bias"))


class CSRLinear(_SparseWeightLinear):
    """``y = x Wᵀ + b`` with ``W`` held as a sparse CSR tensor, for inference.

    ``weight`` (CSR, ``[out_features, in_features]``) and ``bias`` (dense or None) are buffers, so
    ``state_dict``/``load_state_dict``, ``.to()`` and ``torch.save`` carry them; a dense weight
    given to ``load_state_dict`` is converted. Inputs may have any leading shape ``[..., in]``.
    No gradients are computed for the weight.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dim() != 2:
            raise ValueError(f"CSRLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        if not csr_kernel_available(weight.dtype, weight.device):
            raise ValueError(f"torch has no CSR matrix product for {weight.dtype} on {weight.device.type}; "
                             "keep this layer dense")
        super().__init__()
        self._register(weight, bias)

    def _sparse_weight(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.layout == torch.sparse_csr:
            return weight.clone()
        return csr_from_dense(weight if weight.layout == torch.strided else weight.to_dense())

    @classmethod
    def from_linear(cls, linear: torch.nn.Module) -> "CSRLinear":
        """The layer computing what ``linear`` (``F.linear(x, linear.weight, linear.bias)``) does.

        Its nonzero weights become the CSR entries: a trained gsparse model holds exact zeros at
        inactive weights, and an active weight that is exactly zero adds nothing, so this is exact.
        """
        return cls(linear.weight, linear.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"density={self.density:.4f}, bias={self.bias is not None}, dtype={self.weight.dtype}")


# ---- BSR linear layer --------------------------------------------------------------------------

def _block_pair(blocksize: int | tuple[int, int]) -> tuple[int, int]:
    """``b`` as ``(b, b)``; a pair as it is."""
    return (int(blocksize),) * 2 if isinstance(blocksize, int) else (int(blocksize[0]), int(blocksize[1]))


def bsr_kernel_available(dtype: torch.dtype, device: torch.device | str, blocksize: tuple[int, int]) -> bool:
    """Whether torch has a BSR x dense matrix product for ``dtype`` on ``device`` with ``blocksize`` blocks
    (on CPU, MKL's: square blocks, float32/float64)."""
    return bsr_supported(dtype, device, blocksize, training=False)


def bsr_from_dense(weight: torch.Tensor, blocksize: tuple[int, int]) -> torch.Tensor:
    """``weight`` as a BSR tensor of ``blocksize`` blocks, keeping every block with any nonzero
    (so it is exact for any weight), with int32 indices when they fit."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse BSR tensor support is in beta.*")
        bsr = weight.detach().to_sparse_bsr(blocksize)
    crow, col = bsr.crow_indices(), bsr.col_indices()
    if max(bsr.values().numel(), weight.shape[1]) < 2**31:
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    return torch.sparse_bsr_tensor(crow, col, bsr.values(), bsr.shape, check_invariants=False)


class BSRLinear(_SparseWeightLinear):
    """``y = x Wᵀ + b`` with ``W`` held as a sparse BSR tensor of square ``blocksize`` blocks, for inference.

    Exact for any weight (every block holding a nonzero is stored); faster than :class:`CSRLinear`
    when the nonzeros are whole blocks (a ``structure: block`` mask). ``blocksize`` (``b`` or
    ``(b, b)``) is required for a dense ``weight`` and taken from a BSR one. Buffers, input shapes,
    ``load_state_dict`` (dense, CSR or BSR weights) and deepcopy as with :class:`CSRLinear`.
    TorchScript cannot save BSR tensors: :meth:`to_csr` gives the CSR layer for a scripted file.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 blocksize: int | tuple[int, int] | None = None):
        if weight.dim() != 2:
            raise ValueError(f"BSRLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        own = tuple(weight.values().shape[1:]) if weight.layout == torch.sparse_bsr else None
        if blocksize is None and own is None:
            raise ValueError("BSRLinear needs a blocksize for a weight that is not BSR")
        blocksize = own if blocksize is None else _block_pair(blocksize)
        if own is not None and own != blocksize:
            raise ValueError(f"the BSR weight has {own[0]}x{own[1]} blocks, not {blocksize[0]}x{blocksize[1]}")
        rows, cols = weight.shape
        if rows % blocksize[0] or cols % blocksize[1]:
            raise ValueError(f"{blocksize[0]}x{blocksize[1]} blocks do not tile a {rows}x{cols} weight")
        if not bsr_kernel_available(weight.dtype, weight.device, blocksize):
            raise ValueError(f"torch has no BSR matrix product for {weight.dtype} with {blocksize[0]}x{blocksize[1]} "
                             f"blocks on {weight.device.type}; use CSRLinear")
        super().__init__()
        self.blocksize = blocksize
        self._register(weight, bias)

    def _sparse_weight(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.layout == torch.sparse_bsr and tuple(weight.values().shape[1:]) == self.blocksize:
            return weight.clone()
        return bsr_from_dense(weight if weight.layout == torch.strided else weight.to_dense(), self.blocksize)

    @classmethod
    def from_linear(cls, linear: torch.nn.Module, blocksize: int | tuple[int, int]) -> "BSRLinear":
        """The layer computing what ``linear`` (``F.linear(x, linear.weight, linear.bias)``) does."""
        return cls(linear.weight, linear.bias, blocksize)

    @property
    def num_blocks(self) -> int:
        return int(self.weight.values().shape[0])

    @property
    def fill(self) -> float:
        """The fraction of stored entries that are nonzero: 1.0 for a mask of whole blocks (and for no blocks)."""
        return int(torch.count_nonzero(self.weight.values())) / self.nnz if self.nnz else 1.0

    def to_csr(self) -> CSRLinear:
        """The same layer with a CSR weight (its nonzero entries), e.g. for TorchScript."""
        return CSRLinear(self.weight.to_dense(), self.bias).train(self.training)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"blocksize={self.blocksize[0]}x{self.blocksize[1]}, blocks={self.num_blocks}, nnz={self.nnz}, "
                f"density={self.density:.4f}, fill={self.fill:.4f}, bias={self.bias is not None}, "
                f"dtype={self.weight.dtype}")


# ---- export ------------------------------------------------------------------------------------

class ExportReport(dict):
    """Per linear layer name: ``{"shape", "nnz", "density", "exported", "reason", "kernel", "block_fill"}``
    (JSON-ready). ``kernel`` is ``"csr"``, ``"bsr RxC"`` or None (not exported); ``block_fill``, for
    BSR layers only (else None), is the fraction of stored block entries that are nonzero."""

    @property
    def exported_layers(self) -> list[str]:
        return [name for name, entry in self.items() if entry["exported"]]


def _pyg_linear_class(module: torch.nn.Module) -> type | None:
    for cls in type(module).__mro__:
        if (cls.__module__, cls.__name__) == PYG_LINEAR:
            return cls
    return None


def _linear_layers(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, torch.nn.Module | None]]:
    """``name -> (layer, parent)`` for every ``nn.Linear`` and PyG ``Linear`` (each once)."""
    found: dict[str, tuple[torch.nn.Module, torch.nn.Module | None]] = {}
    seen = set()
    if isinstance(model, torch.nn.Linear) or _pyg_linear_class(model) is not None:
        return {"": (model, None)}
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if id(child) in seen or not (isinstance(child, torch.nn.Linear) or _pyg_linear_class(child)):
                continue
            seen.add(id(child))
            found[f"{parent_name}.{child_name}" if parent_name else child_name] = (child, parent)
    return found


def _cannot_export(layer: torch.nn.Module, parent: torch.nn.Module | None) -> str | None:
    """Why ``layer`` must stay as it is, or None."""
    base = torch.nn.Linear if isinstance(layer, torch.nn.Linear) else _pyg_linear_class(layer)
    if type(layer).forward is not base.forward:
        return f"{type(layer).__name__} overrides forward"
    if isinstance(parent, torch.nn.MultiheadAttention):
        return "MultiheadAttention reads this layer's weight directly"
    weight = layer.weight
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        return "weight not initialized yet (lazy layer)"
    if layer._forward_pre_hooks or layer._forward_hooks:
        return "has forward hooks (e.g. a sparse method's forward_weight transform)"
    if weight.dim() != 2 or weight.layout != torch.strided:
        return "weight is not a dense 2-D tensor"
    if not csr_kernel_available(weight.dtype, weight.device):
        return f"no CSR kernel for {weight.dtype} on {weight.device.type}"
    return None


def _bsr_blocksize_for(weight: torch.Tensor, block: tuple[int, int]) -> tuple[tuple[int, int] | None, str]:
    """The BSR block size an exported ``weight`` of a ``block`` mask runs with, or None and why not."""
    blocksize = bsr_blocksize(block, weight.dtype, weight.device, training=False)
    if blocksize is None:
        return None, (f"no BSR kernel for {block[0]}x{block[1]} blocks or a square that tiles them "
                      f"({weight.dtype} on {weight.device.type})")
    rows, cols = weight.shape
    if rows % blocksize[0] or cols % blocksize[1]:
        return None, f"{blocksize[0]}x{blocksize[1]} blocks do not tile {rows}x{cols}"
    return blocksize, ""


def export_sparse(model: torch.nn.Module, min_sparsity: float = 0.5, min_features: int = 256,
                  layers: Iterable[str] | None = None,
                  block: int | tuple[int, int] | None = None) -> tuple[torch.nn.Module, ExportReport]:
    """A copy of ``model`` in eval mode with its sparse linear layers as :class:`CSRLinear` or :class:`BSRLinear`.

    A ``torch.nn.Linear`` or PyG ``Linear`` is exported when at least ``min_sparsity`` of its
    weights are zero and both its in and out features are ``>= min_features`` (small layers run
    slower sparse); ``layers`` (module names) replaces that rule. With ``block`` (``b`` or the
    recipe's ``(rows, cols)`` block size), an exported layer becomes a :class:`BSRLinear` of the
    square blocks :func:`~gsparse.kernels.bsr_linear.bsr_blocksize` picks where they tile its
    weight and torch has the kernel, else a :class:`CSRLinear` (the report says why).
    ``model`` is not changed.
    """
    block = None if block is None else _block_pair(block)
    exported = copy.deepcopy(model).eval()
    for module in exported.modules():  # sparse execution's forward refers to the original layers
        if getattr(getattr(module.__dict__.get("forward"), "__func__", None), "gsparse_execution", False):
            del module.__dict__["forward"]
    candidates = _linear_layers(exported)
    wanted = None if layers is None else set(layers)
    if wanted is not None and wanted - candidates.keys():
        raise ValueError(f"not linear layers of the model: {sorted(wanted - candidates.keys())}; "
                         f"linear layers: {sorted(candidates)}")
    report = ExportReport()
    replacements: dict[int, torch.nn.Module] = {}
    for name, (layer, parent) in candidates.items():
        blocker = _cannot_export(layer, parent)
        weight = layer.weight
        if isinstance(weight, torch.nn.parameter.UninitializedParameter):
            entry = {"shape": None, "nnz": None, "density": None}
        else:
            nnz = int(torch.count_nonzero(weight.detach()))
            entry = {"shape": list(weight.shape), "nnz": nnz, "density": nnz / max(1, weight.numel())}
        sparsity = None if entry["density"] is None else 1.0 - entry["density"]
        if blocker is not None:
            ok, reason = False, blocker
        elif wanted is not None:
            ok = name in wanted
            reason = "named in layers" if ok else "not named in layers"
        elif sparsity < min_sparsity:
            ok, reason = False, f"sparsity {sparsity:.4f} < min_sparsity {min_sparsity}"
        elif min(weight.shape) < min_features:
            ok, reason = False, f"in/out features {weight.shape[1]}/{weight.shape[0]} < min_features {min_features}"
        else:
            ok, reason = True, f"sparsity {sparsity:.4f} >= {min_sparsity}, in/out features >= {min_features}"
        entry.update(exported=ok, reason=reason, kernel=None, block_fill=None)
        if ok:
            blocksize, not_bsr = (None, "") if block is None else _bsr_blocksize_for(weight, block)
            if blocksize is None:
                replacements[id(layer)] = CSRLinear.from_linear(layer).eval()
                entry["kernel"] = "csr"
                entry["reason"] += f"; csr: {not_bsr}" if not_bsr else ""
            else:
                replacement = BSRLinear.from_linear(layer, blocksize).eval()
                replacements[id(layer)] = replacement
                entry.update(kernel=f"bsr {blocksize[0]}x{blocksize[1]}", block_fill=replacement.fill)
        report[name] = entry
    if id(exported) in replacements:  # the model is itself one linear layer
        return replacements[id(exported)], report
    for parent in list(exported.modules()):  # every parent, so a shared layer is replaced everywhere
        for key, child in parent._modules.items():
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]
    return exported, report


# ---- compact file ------------------------------------------------------------------------------

def _smallest_index_dtype(largest: int) -> torch.dtype:
    for dtype in (torch.int8, torch.int16, torch.int32):
        if largest <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def _pack_bits(flags: torch.Tensor) -> torch.Tensor:
    padded = torch.zeros(-(-flags.numel() // 8) * 8, dtype=torch.uint8)
    padded[:flags.numel()] = flags.reshape(-1)
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    return (packed.view(-1, 1) & _BIT_WEIGHTS).ne(0).reshape(-1)[:count]


def _csr_pieces(tensor: torch.Tensor, min_sparsity: float) -> dict[str, torch.Tensor] | None:
    """CSR pieces of a floating tensor of 2 or more dimensions (as ``[shape[0], -1]``) when at least
    ``min_sparsity`` of it is zero and the pieces take fewer bytes than the tensor; else None.

    gsparse zeroes inactive weights by multiplying with the mask, so about half of them are -0.0:
    their positions are kept as a bitmap (``negative_zeros``, 1 bit an entry) to load bit-exact."""
    if not tensor.is_floating_point() or tensor.dim() < 2 or tensor.numel() == 0:
        return None
    matrix = tensor.reshape(tensor.shape[0], -1)
    stored = matrix != 0  # NaN included
    nnz = int(stored.sum())
    if 1.0 - nnz / matrix.numel() < min_sparsity:
        return None
    negative_zeros = ~stored & torch.signbit(matrix)
    has_negative_zeros = bool(negative_zeros.any())
    crow_dtype, col_dtype = _smallest_index_dtype(nnz), _smallest_index_dtype(matrix.shape[1] - 1)
    csr_bytes = ((matrix.shape[0] + 1) * crow_dtype.itemsize + nnz * (col_dtype.itemsize + tensor.element_size())
                 + has_negative_zeros * -(-matrix.numel() // 8))
    if csr_bytes >= tensor.numel() * tensor.element_size():
        return None
    crow = torch.zeros(matrix.shape[0] + 1, dtype=torch.int64)
    crow[1:] = stored.sum(dim=1).cumsum(0)
    pieces = {"crow_indices": crow.to(crow_dtype), "col_indices": stored.nonzero()[:, 1].to(col_dtype),
              "values": matrix[stored]}
    if has_negative_zeros:
        pieces["negative_zeros"] = _pack_bits(negative_zeros)
    return pieces


def _dense_from_pieces(pieces: Mapping[str, torch.Tensor], shape: list[int]) -> torch.Tensor:
    crow, col, values = (pieces[name] for name in CSR_PIECES)
    rows = shape[0]
    matrix = torch.zeros(rows, math.prod(shape) // rows, dtype=values.dtype)
    if "negative_zeros" in pieces:
        matrix.view(-1)[_unpack_bits(pieces["negative_zeros"], matrix.numel())] = -0.0
    row_index = torch.repeat_interleave(torch.arange(rows), crow.long().diff())
    matrix[row_index, col.long()] = values
    return matrix.reshape(shape)


def _state_dict_of(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return model.state_dict() if isinstance(model, torch.nn.Module) else model


def _safetensors_torch():
    """``safetensors.torch``, or None where it does not import."""
    try:
        import safetensors.torch as module
    except ImportError:
        return None
    return module


def save_compact(model: torch.nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                 min_sparsity: float = 0.5) -> Path:
    """Write ``model``'s state dict to ``path`` with its sparse weights as CSR pieces.

    A floating tensor of 2+ dimensions with at least ``min_sparsity`` zeros (and fewer bytes as
    CSR) is stored as ``<name>.crow_indices``, ``<name>.col_indices`` (smallest integer type that
    fits), ``<name>.values`` and, if it holds any -0.0, ``<name>.negative_zeros`` (a bitmap);
    everything else as it is. The layout (each name's format and
    shape) is metadata. Written as safetensors when that package imports, else with ``torch.save``.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    state = _state_dict_of(model)
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"save_compact stores tensors only; '{name}' is a {type(tensor).__name__}")
        tensor = tensor.detach().cpu()
        tensor = tensor.to_dense() if tensor.layout != torch.strided else tensor
        pieces = _csr_pieces(tensor, min_sparsity)
        if pieces is None:
            pieces, layout[name] = {"": tensor.clone(memory_format=torch.contiguous_format)}, {"format": "dense"}
        else:
            layout[name] = {"format": "csr", "shape": list(tensor.shape)}
        for suffix, piece in pieces.items():
            key = f"{name}.{suffix}" if suffix else name
            if key in tensors or (suffix and key in state):
                raise ValueError(f"cannot store '{name}' as CSR: the name '{key}' is taken")
            tensors[key] = piece
    safetensors_torch = _safetensors_torch()
    if safetensors_torch is not None:
        metadata = {"format": COMPACT_FORMAT, "version": str(COMPACT_VERSION), "layout": json.dumps(layout)}
        safetensors_torch.save_file(tensors, str(path), metadata=metadata)
    else:
        torch.save({"format": COMPACT_FORMAT, "version": COMPACT_VERSION, "layout": layout, "tensors": tensors}, path)
    return path


def load_compact(path: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict that :func:`save_compact` wrote to ``path`` (bit-exact, on CPU)."""
    path = Path(path)
    with open(path, "rb") as file:
        is_torch_file = file.read(4) == _ZIP_MAGIC
    if is_torch_file:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(stored, dict) or stored.get("format") != COMPACT_FORMAT:
            raise ValueError(f"{path} is not a {COMPACT_FORMAT} file")
        layout, tensors = stored["layout"], stored["tensors"]
    else:
        try:
            from safetensors import safe_open
        except ImportError as error:
            raise ImportError(f"{path} is a safetensors file: pip install safetensors to read it") from error
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != COMPACT_FORMAT:
                raise ValueError(f"{path} is not a {COMPACT_FORMAT} file")
            layout = json.loads(metadata["layout"])
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    state = {}
    for name, entry in layout.items():
        if entry["format"] == "csr":
            pieces = {piece: tensors[f"{name}.{piece}"] for piece in (*CSR_PIECES, "negative_zeros")
                      if f"{name}.{piece}" in tensors}
            state[name] = _dense_from_pieces(pieces, entry["shape"])
        else:
            state[name] = tensors[name]
    return state


class _ByteCounter:
    """A write-only file that counts bytes, to size ``torch.save`` output without keeping it."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def compact_report(model: torch.nn.Module | Mapping[str, torch.Tensor], path: str | Path) -> dict:
    """Bytes of the compact file at ``path`` vs ``torch.save(model.state_dict())``."""
    counter = _ByteCounter()
    torch.save(dict(_state_dict_of(model)), counter)
    compact = Path(path).stat().st_size
    return {"compact_file": str(path), "compact_bytes": compact, "dense_bytes": counter.size,
            "ratio": compact / max(1, counter.size)}


# ---- files (the ``gsparse export`` command) ----------------------------------------------------

def with_csr_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """``model`` (changed in place, or the new layer if it is one) with its :class:`BSRLinear` layers
    as :class:`CSRLinear`, and their names: TorchScript cannot save BSR tensors."""
    if isinstance(model, BSRLinear):
        return model.to_csr(), [""]
    converted = {}
    for name, module in model.named_modules():
        if isinstance(module, BSRLinear):
            converted.setdefault(id(module), (name, module.to_csr()))
    for parent in list(model.modules()):
        for key, child in parent._modules.items():
            if child is not None and id(child) in converted:
                parent._modules[key] = converted[id(child)][1]
    return model, [name for name, _ in converted.values()]


def export_file(model_file: str | Path, out: str | Path, min_sparsity: float = 0.5, min_features: int = 256,
                compact: bool = False, torchscript: bool = False, block: int | tuple[int, int] | None = None) -> dict:
    """Export the module ``torch.save``d at ``model_file`` (loaded on CPU) to ``out``.

    ``block`` (a block mask's block size) exports layers that its blocks tile as :class:`BSRLinear`
    (see :func:`export_sparse`). With ``compact``, also writes the original weights with
    :func:`save_compact` beside ``out`` (``.safetensors``, or ``.compact.pt`` without safetensors);
    with ``torchscript``, the exported module scripted (``torch.jit.load`` needs no Python
    classes) as ``.torchscript.pt``, its BSR layers as CSR (``torchscript_csr_layers`` in the report:
    TorchScript cannot save BSR tensors). Returns the report: layers, files and sizes. Loading
    unpickles ``model_file``: trust it.
    """
    model_file, out = Path(model_file), Path(out)
    if not model_file.is_file():
        raise FileNotFoundError(f"no such model file: {model_file}")
    try:
        model = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as error:  # a pickle may raise anything
        raise ValueError(f"cannot load {model_file} with torch.load: {error}") from error
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"{model_file} holds a {type(model).__name__}, not a torch.nn.Module "
                         "(save the whole model with torch.save(model, path))")
    exported, layers = export_sparse(model, min_sparsity=min_sparsity, min_features=min_features, block=block)
    scripted, csr_for_script = None, []
    if torchscript:
        scriptable, csr_for_script = with_csr_layers(copy.deepcopy(exported))
        try:
            scripted = torch.jit.script(scriptable)
        except Exception as error:  # TorchScript supports only some Python; say which part failed
            raise ValueError(f"cannot script the exported model with torch.jit.script: {error}") from error
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(exported, out)
    counter = _ByteCounter()
    torch.save(model.state_dict(), counter)
    sizes = {"out_bytes": out.stat().st_size, "dense_state_dict_bytes": counter.size}
    files = {"out": str(out)}
    if compact:
        suffix = ".compact.pt" if _safetensors_torch() is None else ".safetensors"
        files["compact"] = str(save_compact(model, out.with_name(out.stem + suffix), min_sparsity=min_sparsity))
        sizes["compact_bytes"] = Path(files["compact"]).stat().st_size
    if scripted is not None:
        files["torchscript"] = str(out.with_name(out.stem + ".torchscript.pt"))
        torch.jit.save(scripted, files["torchscript"])
    report = {"model_file": str(model_file), "files": files, "sizes": sizes, "layers": layers}
    if scripted is not None:
        report["torchscript_csr_layers"] = csr_for_script
    return report
