"""Training and inference FLOPs of weight layers, from the masks and the layer types.

Counted: the ``weight`` of every ``Linear`` (torch's, or any module class named ``Linear`` with a
2-D weight, e.g. PyG's) and ``Conv1d`` / ``Conv2d`` / ``Conv3d``. A forward hook records, once,
how many times each weight is used per forward call: ``output.numel() / out_features`` for a
linear layer (batch x any leading dimensions), ``output.numel() / out_channels`` for a
convolution (batch x output positions). A weight ``w`` of a layer used ``u`` times costs
``2 * u`` FLOPs forward (a multiply-add) if active, and a layer's forward FLOPs are
``2 * u * (active weights)``; that is exact for masks of any pattern, grouped convolutions
included. Biases, normalisation, activations, embeddings (look-ups), the loss and the optimizer
update are left out.

Training FLOPs per step are ``3 x`` the forward FLOPs (forward, input gradient, weight gradient),
plus, at every mask update of a method that needs dense gradients (RigL, DST-EE), the dense weight
gradient of the sparse layers ``2 * u * numel``::

    6 * sum_l u_l * weight_steps_l  +  2 * sum_sparse u_l * numel_l * dense_gradient_updates

``weight_steps_l`` is ``numel_l * steps`` for a dense layer and, for a sparse layer, the sum over
steps of its active weights (``engine.layer_active_steps``: exact for every method, also when
budgets move between layers; dense phases count in full).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import torch

CONV_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


@dataclass(frozen=True)
class WeightUse:
    """One counted weight: its module type, full number of elements and uses per forward call."""

    kind: str  # "Linear" | "Conv1d" | "Conv2d" | "Conv3d"
    numel: int
    uses: int  # output elements per output feature/channel in one forward call


def _full_shape(parameter: torch.Tensor) -> tuple:
    shape = getattr(parameter, "ds_shape", None)  # ZeRO-3 partitions parameters in place
    return tuple(shape if shape is not None else parameter.shape)


def counted_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{weight parameter name: module}`` for the layers FLOPs are counted for."""
    layers = {}
    for prefix, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter):
            continue
        linear = isinstance(module, torch.nn.Linear) or (type(module).__name__ == "Linear"
                                                         and len(_full_shape(weight)) == 2)
        if linear or isinstance(module, CONV_TYPES):
            layers[f"{prefix}.weight" if prefix else "weight"] = module
    return layers


class UseRecorder:
    """Forward hooks that record each counted layer's uses per forward call on the first call.

    ``with UseRecorder(model) as recorder: model(batch)`` then ``recorder.uses``."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.uses: dict[str, WeightUse] = {}
        self._handles = []

    def __enter__(self) -> "UseRecorder":
        for name, module in counted_layers(self.model).items():
            self._handles.append(module.register_forward_hook(self._hook(name, module)))
        return self

    def _hook(self, name: str, module: torch.nn.Module) -> Callable:
        def record(_module, _inputs, output):
            if name in self.uses or not isinstance(output, torch.Tensor):
                return
            shape = _full_shape(module.weight)
            kind = "Linear" if not isinstance(module, CONV_TYPES) else type(module).__name__
            for conv in CONV_TYPES:
                if isinstance(module, conv):
                    kind = conv.__name__
            self.uses[name] = WeightUse(kind, math.prod(shape), output.numel() // shape[0])
        return record

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def record_uses(model: torch.nn.Module, forward: Callable[[], Any]) -> dict[str, WeightUse]:
    """Run ``forward()`` once (without gradients) with hooks on ``model``; returns the uses."""
    with UseRecorder(model) as recorder, torch.no_grad():
        forward()
    return recorder.uses


def forward_flops(uses: Mapping[str, WeightUse], masks: Mapping[str, torch.Tensor] | None = None) -> int:
    """FLOPs of one forward call: ``2 * uses * active`` per layer (all weights for a layer without a mask)."""
    masks = masks or {}
    return sum(2 * use.uses * (int(masks[name].sum()) if name in masks else use.numel) for name, use in uses.items())


def training_flops(uses: Mapping[str, WeightUse], steps: int, calls_per_step: int = 1,
                   layer_active_steps: Mapping[str, int] | None = None, sparse_steps: int = 0,
                   dense_gradient_updates: int = 0, dense_weight_gradient: bool = False) -> dict[str, Any]:
    """Training FLOPs of a run (see the module docstring).

    ``uses`` was recorded on one forward call; ``calls_per_step`` such calls make one optimizer
    step (ranks x micro-batches). ``layer_active_steps`` maps each sparse weight to the sum of its
    active weights over the ``sparse_steps`` steps the sparsifier counted (any other step of the
    ``steps`` counts the layer in full). ``dense_weight_gradient``: the sparse layers' weight
    gradient is dense at every step (methods that keep the mask in forward only, e.g. AutoSparse's
    gradient annealing): 4 FLOPs per active weight use (forward, input gradient) + 2 per weight."""
    sparse = dict(layer_active_steps or {})
    weight_uses = 0
    dense_step = 0
    for name, use in uses.items():
        dense_step += 6 * use.uses * use.numel * calls_per_step
        if name in sparse:
            weight_uses += use.uses * (sparse[name] + use.numel * (steps - sparse_steps))
        else:
            weight_uses += use.uses * use.numel * steps
    dense_gradient = sum(2 * uses[n].uses * uses[n].numel for n in sparse if n in uses)
    total = 6 * weight_uses * calls_per_step + dense_gradient * calls_per_step * dense_gradient_updates
    if dense_weight_gradient:  # the weight-gradient third is dense at every step, not only the active part
        active_part = sum(uses[n].uses * (sparse[n] + uses[n].numel * (steps - sparse_steps)) for n in sparse if n in uses)
        total += 2 * calls_per_step * (sum(uses[n].uses * uses[n].numel for n in sparse if n in uses) * steps
                                       - active_part)
    return {"training": float(total), "dense_step": float(dense_step),
            "dense_training": float(dense_step * steps), "calls_per_step": calls_per_step,
            "layers": {name: asdict(use) for name, use in uses.items()}}
