"""Sparse execution: a recipe's sparse linear layers run with CSR kernels (``execution: sparse|auto``).

The weight stays the dense parameter the optimizer, checkpoints and ZeRO see; only the layer's
forward changes (:func:`~gsparse.kernels.csr_linear.csr_linear`): the CSR structure is built from
the full mask when the masks change (a mask update, a load) - inside the optimizer step, where every
rank is, so gathering a sharded mask never waits on a rank that is elsewhere - and the values are read
from the weight at each call. The weight gradient is sampled at active entries only, except for the
micro-batches of a step whose mask change reads or grows weights (the method's
``needs_dense_gradient``: RigL's and DST-EE's scores, any method's grown weights). Values are read
at every call, without autograd too: a weight changed in place in any way (``.data`` included) is
always what runs.

``sparse`` runs every eligible layer sparse; ``auto`` times dense against sparse once per layer
(:func:`~gsparse.kernels.choice.choose_execution`) on the input rows of the first step (a layer in a
dense phase, e.g. GMP's start, once its mask is sparse enough), takes rank 0's decisions on every
rank (equal results on every rank) and keeps them in the sparse state, so a resumed run decides
nothing again. Eligible: ``torch.nn.Linear`` and PyG's ``Linear`` layers of a
method that keeps inactive weights at zero between mask changes; a layer whose mask is more than
half active (a dense phase), or whose dtype has no CSR kernel on its device (bf16/fp16 on CPU),
runs dense at that time.

With ``structure: block`` a layer runs its forward and input gradient with BSR kernels
(:func:`~gsparse.kernels.bsr_linear.bsr_linear`, blocks from
:func:`~gsparse.kernels.bsr_linear.bsr_blocksize`) and keeps the CSR structure for the weight
gradient; where torch has no BSR kernel for its dtype, device and blocks it runs CSR. ``auto``
times the kernel the layer runs.
"""
from __future__ import annotations

import contextlib
import logging
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gsparse.kernels.bsr_linear import BSRStructure, bsr_blocksize, bsr_linear, bsr_supported
from gsparse.kernels.choice import choose_execution
from gsparse.kernels.csr_linear import CSRStructure, csr_linear, csr_supported

logger = logging.getLogger(__name__)

EXECUTION_MODES = ("dense", "sparse", "auto")
MAX_SPARSE_DENSITY = 0.5  # above it a layer runs dense (GMP's start, AC/DC's dense phases)
_PYG_LINEAR = ("torch_geometric.nn.dense.linear", "Linear")
_DENSE, _SPARSE, _NOT_CALLED = 0.0, 1.0, -1.0  # auto's outcomes, as rank 0 shares them


@dataclass
class LayerExecution:
    """How one sparse layer runs, and why."""

    name: str
    index: int  # the engine's layer index
    module: torch.nn.Module | None
    mode: str = "dense"  # "sparse", "dense", or "pending" (auto, until decided: after step 1, or once sparse)
    reason: str = ""
    dense_ms: float | None = None
    sparse_ms: float | None = None
    rows: int | None = None  # input rows of the first forward (what auto times)
    structure: CSRStructure | None = None
    blocks: BSRStructure | None = None  # structure: block, where torch has BSR kernels: forward and input gradient
    density: float = 1.0
    builds: int = 0  # how often the structure was built (tests: once per mask change)
    sampled: bool = False  # its latest forward since the last step gave a sampled (active-only) weight gradient

    def describe(self) -> dict[str, Any]:
        reason = self.reason
        if self.mode == "pending" and not reason:
            reason = ("auto: runs dense until decided after the first step" if self.structure is not None
                      or self.density <= MAX_SPARSE_DENSITY else
                      f"auto: {self.density:.2f} of its weights active, above {MAX_SPARSE_DENSITY}: dense until a "
                      "mask update makes it sparser, then decided")
        if self.mode == "sparse" and self.structure is None and self.density > MAX_SPARSE_DENSITY:
            reason += f"; {self.density:.2f} of its weights active now, above {MAX_SPARSE_DENSITY}: runs dense until then"
        return {"mode": self.mode, "reason": reason, "dense_ms": self.dense_ms, "sparse_ms": self.sparse_ms,
                "density": self.density, "kernel": self.kernel if self.mode == "sparse" else None}

    @property
    def kernel(self) -> str | None:
        """The sparse kernel the layer's structure runs: "csr", "bsr RxC" (its BSR blocks), or None
        (no structure: dense phase)."""
        if self.blocks is not None:
            return f"bsr {self.blocks.blocksize[0]}x{self.blocks.blocksize[1]}"
        return None if self.structure is None else "csr"


def linear_problem(module: torch.nn.Module | None, attribute: str) -> str | None:
    """Why ``module.<attribute>`` cannot run with CSR kernels (``None``: it can)."""
    if module is None or attribute != "weight":
        return "not the weight of a module"
    kind = type(module)
    if kind is torch.nn.Linear or (kind.__module__, kind.__name__) == _PYG_LINEAR:
        return None
    return f"a {kind.__name__}: only torch.nn.Linear and PyG's Linear run with sparse kernels"


class SparseExecution:
    """Installed by the sparsifiers when the recipe's ``execution`` is not ``dense``."""

    def __init__(self, model: torch.nn.Module, engine, mode: str):
        if mode not in EXECUTION_MODES:
            raise ValueError(f"execution: '{mode}' is not one of: {', '.join(EXECUTION_MODES)}")
        self.engine, self.mode = engine, mode
        self.layers: list[LayerExecution] = []
        self._originals: list[tuple[torch.nn.Module, Any]] = []
        self._built_version: int | None = None
        self._first_decision_step = 1  # auto decides after a step whose forwards it saw (not right after a load)
        self._dense_gradients_requested = False
        method_problem = engine.method.sparse_execution_problem()
        modules = dict(model.named_modules())
        for index, layer in enumerate(engine.layers):
            module_name, _, attribute = layer.spec.name.rpartition(".")
            module = modules.get(module_name)
            entry = LayerExecution(layer.spec.name, index, module)
            entry.reason = method_problem or linear_problem(module, attribute) or ""
            if not entry.reason:
                entry.mode = "sparse" if mode == "sparse" else "pending"
                entry.reason = "execution: sparse" if mode == "sparse" else ""
                self._install(entry)
            self.layers.append(entry)
        engine.step_callbacks.append(self._after_change)
        self._after_change("attach")

    # ---- structure: rebuilt when the masks change --------------------------------------------

    def _after_change(self, event: str) -> None:
        decided = self.engine.extra_state.get("execution") or {}
        for entry in self.layers:  # a resumed run takes the decisions it made before
            if entry.mode == "pending" and entry.name in decided:
                for key in ("mode", "reason", "dense_ms", "sparse_ms"):
                    setattr(entry, key, decided[entry.name][key])
        if self._built_version != self.engine.mask_version:
            self._rebuild()
        if event == "load":
            self._first_decision_step = self.engine.step + 1
        if event == "step":
            for entry in self.layers:
                entry.sampled = False
            if self.mode == "auto" and self.engine.step >= self._first_decision_step:
                self._decide()

    def _rebuild(self) -> None:
        wanted = [entry for entry in self.layers if entry.mode in ("sparse", "pending")]
        block = getattr(self.engine, "block", None)  # structure: block: masks are whole blocks of this shape
        if wanted:
            full = self.engine.gather(("mask",), [entry.name for entry in wanted])  # a collective when sharded
            for entry in wanted:
                mask = full[entry.name]["mask"]
                weight = entry.module.weight
                entry.density = float(mask.sum()) / max(mask.numel(), 1)
                matrix_mask = mask.reshape(mask.shape[0], -1).to(weight.device)
                entry.structure = CSRStructure.from_mask(matrix_mask) if entry.density <= MAX_SPARSE_DENSITY else None
                blocksize = None if entry.structure is None or block is None else bsr_blocksize(
                    block, weight.dtype, weight.device)
                entry.blocks = None if blocksize is None else BSRStructure.from_mask(matrix_mask, blocksize)
                entry.builds += 1
        self._built_version = self.engine.mask_version

    def _decide(self) -> None:
        """auto: time each pending layer with a sparse enough mask (a dense phase waits) on rank 0, with
        the input rows rank 0 saw; every rank takes rank 0's outcomes (one all-reduce: only rank 0
        writes), and the sparse state keeps them. The layers decided are the same on every rank: their
        structures come from the full masks."""
        for entry in self.layers:  # dense for good: the recipe's own density for the layer is too high
            target = self.engine.layers[entry.index].spec
            target_density = target.active_count / max(target.numel, 1)
            if entry.mode == "pending" and target_density > MAX_SPARSE_DENSITY:
                entry.mode = "dense"
                entry.reason = (f"auto: {target_density:.2f} of its weights active at the recipe's target, above "
                                f"{MAX_SPARSE_DENSITY}")
                self.engine.extra_state.setdefault("execution", {})[entry.name] = entry.describe()
        pending = [entry for entry in self.layers if entry.mode == "pending" and entry.structure is not None]
        if not pending:
            return
        communicator = self.engine.backend.communicator
        outcomes = torch.zeros(len(pending), 3, dtype=torch.float64)  # outcome, dense_ms, sparse_ms
        reasons = {}
        if communicator.rank == 0:
            for row, entry in enumerate(pending):
                outcomes[row] = torch.tensor(self._time(entry, reasons), dtype=torch.float64)
        communicator.all_reduce_sum(outcomes)
        for entry, (outcome, dense_ms, sparse_ms) in zip(pending, outcomes.tolist()):
            entry.mode = "sparse" if outcome == _SPARSE else "dense"
            if outcome == _NOT_CALLED:
                entry.reason = "auto: not called in the step it was timed after"
            elif dense_ms or sparse_ms:
                entry.dense_ms, entry.sparse_ms = round(dense_ms, 4), round(sparse_ms, 4)
                entry.reason = (f"auto at {entry.rows} rows: dense {dense_ms:.3f} ms, sparse {sparse_ms:.3f} ms "
                                "per forward+backward")
            else:  # not timed: rank 0's reason (e.g. no CSR kernel for the dtype)
                entry.reason = "auto: " + reasons.get(entry.name, "not timed on rank 0")
            logger.info("gsparse: %s runs %s (%s)", entry.name, entry.mode, entry.reason)
        self.engine.extra_state["execution"] = {**self.engine.extra_state.get("execution", {}),
                                                **{entry.name: entry.describe() for entry in pending}}

    @staticmethod
    def _time(entry: LayerExecution, reasons: dict) -> tuple[float, float, float]:
        """Rank 0's outcome for one layer: (outcome, dense_ms, sparse_ms); never raises, so that every
        rank reaches the all-reduce."""
        if not entry.rows:
            return _NOT_CALLED, 0.0, 0.0
        weight = entry.module.weight  # under ZeRO-3 a placeholder outside forward: shapes from the structure
        out_features, in_features = entry.structure.shape
        # the block size only when there is one (callers and tests may stand in their own choose_execution)
        blocks = {} if entry.blocks is None else {"block": entry.blocks.blocksize}
        try:
            choice = choose_execution(out_features, in_features, entry.structure.nnz, entry.rows, weight.dtype,
                                      weight.device, **blocks)
        except Exception as error:  # a kernel that fails here must not leave the other ranks waiting
            reasons[entry.name] = f"timing failed ({type(error).__name__}: {error})"
            return _DENSE, 0.0, 0.0
        reasons[entry.name] = choice.reason
        return (_SPARSE if choice.mode == "sparse" else _DENSE), choice.dense_ms or 0.0, choice.sparse_ms or 0.0

    @contextlib.contextmanager
    def dense_gradients(self):
        """Compute dense weight gradients in the forwards inside the block (for a mask update outside
        the schedule, :meth:`gsparse.Sparsifier.update_masks`)."""
        previous, self._dense_gradients_requested = self._dense_gradients_requested, True
        try:
            yield
        finally:
            self._dense_gradients_requested = previous

    # ---- forward ---------------------------------------------------------------------------

    def _install(self, entry: LayerExecution) -> None:
        module = entry.module
        self._originals.append((module, module.__dict__.get("forward")))

        def forward(layer, input, entry=entry):
            if layer is not entry.module:  # a copy of the model (deepcopy: EMA, snapshots) runs dense
                return F.linear(input, layer.weight, layer.bias)
            return self._forward(entry, input)

        forward.gsparse_execution = True  # copies of the model (gsparse.export) drop it
        module.forward = types.MethodType(forward, module)

    def _forward(self, entry: LayerExecution, input: torch.Tensor) -> torch.Tensor:
        module = entry.module
        weight, bias = module.weight, module.bias
        if input.numel():
            entry.rows = input.numel() // input.shape[-1]
        structure = entry.structure
        if entry.mode != "sparse" or structure is None or not csr_supported(weight.dtype, weight.device) \
                or tuple(weight.shape) != structure.shape:
            return F.linear(input, weight, bias)
        dense_gradient = self._dense_gradients_requested or self.engine.method.needs_dense_gradient(
            self.engine.step + 1)
        if torch.is_grad_enabled() and weight.requires_grad:
            entry.sampled = not dense_gradient
        # .contiguous(): code after a linear layer may .view its output (the sparse product's is transposed)
        blocks = entry.blocks
        if blocks is not None and bsr_supported(weight.dtype, weight.device, blocks.blocksize):
            return bsr_linear(input, weight, bias, blocks, structure, dense_gradient).contiguous()
        return csr_linear(input, weight, bias, structure, dense_gradient).contiguous()

    @property
    def sampled_since_step(self) -> bool:
        """Whether a layer's latest forward since the last optimizer step computed only the gradients of
        active weights (a mask update outside the schedule then lacks the others)."""
        return any(entry.sampled for entry in self.layers)

    # ---- reporting and removal -------------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        """Per sparse layer: ``mode`` (sparse/dense/pending), ``reason``, timings (auto) and density."""
        return {entry.name: entry.describe() for entry in self.layers}

    def remove(self) -> None:
        """Restore the layers' own forward."""
        for module, original in self._originals:
            if original is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = original
        self._originals = []
        if self._after_change in self.engine.step_callbacks:
            self.engine.step_callbacks.remove(self._after_change)
