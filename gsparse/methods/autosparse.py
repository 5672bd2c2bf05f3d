"""AutoSparse: learnable per-layer thresholds with Gradient Annealing (GA) (Kundu et al., "AutoSparse:
Towards Automated Sparse Training", /work/shared/papers/autosparse.md).

Rules implemented:

* Forward (Eq. 7): ``w~ = sign(w) * h_alpha(|w| - T_l)`` with ``T_l = sigmoid(s_l)`` and one trainable
  scalar ``s_l`` per sparse layer (``layer_parameters = {"s": -5.0}``, the paper's ``s_0``). ``s`` is
  trained by the optimizer with its default options, weight decay included (as in STR/AutoSparse).
* ``h_alpha`` (Eq. 1): ReLU in forward; in backward the (proxy) derivative is 1 where ``|w| > T`` and
  ``alpha`` where ``|w| <= T``. So a pruned weight gets ``alpha * dL/dw~`` (exactly 0 when
  ``alpha = 0``: STR), and ``T`` gets ``-sum(dL/dw~ * sign(w) * h')``, flowing on to ``s`` through the
  sigmoid.
* Gradient annealing: ``alpha`` is fixed within an epoch (``steps_per_epoch`` optimizer steps) and
  set at each epoch boundary to ``alpha0 * decay(i, T)`` (``i``: the 0-based epoch, ``T``: ``epochs``):
  cosine (Eq. 2), sigmoid (Eq. 3, ``L0 = -6``, ``L1 = 6``), sigmoid_cosine (Eq. 4, the paper's
  choice), exponential (Eq. 9, ``exp(-beta * i)``), linear, constant. From epoch ``alpha_zero_epoch``
  (0-based) on ``alpha = 0``.
* The method learns which weights are pruned: ``enforces_mask = False`` (the engine zeroes nothing)
  and every step the mask is assigned ``|w| > sigmoid(s)`` from the weights and ``s`` that step's
  forward used (the first mask, before step 1, is dense).

Step convention: the forward (and backward) of optimizer step ``t`` runs before the engine's
``begin_step(t)``; it uses ``alpha_at(t)``, i.e. the ``alpha`` of epoch ``(t - 1) // steps_per_epoch``.
The method counts the steps it has begun and saves that count in ``state_dict`` so a resumed run
uses the same ``alpha``.

Runaway sparsity: a layer whose every weight is at or below its threshold is reported with a
``RunawaySparsity`` warning from forward (forward sees the whole weight, so this is exact under any
sharding; one device sync per layer and forward, off with ``warn_fully_pruned: false``); the
per-layer density in ``Sparsifier.metrics()["layers"]`` shows it too.

``topkast_ga`` (the paper's TopKAST* + GA, fixed budget): forward keeps each layer's recipe budget of
largest magnitudes, the other weights get ``alpha`` times their gradient, on the same schedule.
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping

import torch

from gsparse.methods.base import LayerInfo, MaskChange, SparseMethod
from gsparse.methods.registry import register_method
from gsparse.options import Option, boolean, choice, integer, number, optional, or_from_run, steps
from gsparse.selection import reference_top_k

ALPHA_DECAYS = ("sigmoid_cosine", "cosine", "sigmoid", "exponential", "linear", "constant")
SIGMOID_L0, SIGMOID_L1 = -6.0, 6.0  # Eq. 3 of the paper


class RunawaySparsity(UserWarning):
    """A sparse layer is fully pruned: every |w| is at or below its learned threshold."""


def alpha_decay(kind: str, epoch: int, epochs: int, beta: float = 1.0) -> float:
    """The paper's scale of ``alpha`` in (0-based) ``epoch`` of ``epochs`` (progress capped at 1)."""
    progress = min(epoch / epochs, 1.0)
    cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
    sigmoid = 1.0 - 1.0 / (1.0 + math.exp(-(SIGMOID_L0 + (SIGMOID_L1 - SIGMOID_L0) * progress)))
    if kind == "cosine":
        return cosine
    if kind == "sigmoid":
        return sigmoid
    if kind == "sigmoid_cosine":
        return max(sigmoid, cosine)
    if kind == "exponential":
        return math.exp(-beta * epoch)
    if kind == "linear":
        return 1.0 - progress
    return 1.0  # constant


class _GradientAnnealedThreshold(torch.autograd.Function):
    """``sign(w) * relu(|w| - T)``; backward: derivative of h is 1 where ``|w| > T``, ``alpha`` elsewhere."""

    @staticmethod
    def forward(ctx, weight, threshold, alpha: float):
        kept = weight.abs() > threshold
        ctx.save_for_backward(weight, kept)
        ctx.alpha = alpha
        ctx.threshold_shape = threshold.shape
        return torch.where(kept, torch.sign(weight) * (weight.abs() - threshold), torch.zeros_like(weight))

    @staticmethod
    def backward(ctx, grad_output):
        weight, kept = ctx.saved_tensors
        slope = torch.where(kept, torch.ones_like(grad_output), torch.full_like(grad_output, ctx.alpha))
        scaled = grad_output * slope
        # d w~ / d w = h'(|w| - T) * sign(w)^2: taken as h' for w = 0 too, so a zero weight can revive
        grad_weight = scaled if ctx.needs_input_grad[0] else None
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            grad_threshold = -(scaled * torch.sign(weight)).sum(dtype=torch.float32)
            grad_threshold = grad_threshold.to(grad_output.dtype).reshape(ctx.threshold_shape)
        return grad_weight, grad_threshold, None


def gradient_annealed_threshold(weight: torch.Tensor, threshold: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sign(w) * h_alpha(|w| - T)`` of Eq. 1/7, differentiable in ``weight`` and ``threshold``."""
    return _GradientAnnealedThreshold.apply(weight, threshold, float(alpha))


class AutoSparse(SparseMethod):
    """Learned per-layer thresholds ``T = sigmoid(s)`` with gradient annealing of pruned weights."""

    name = "autosparse"
    transforms_forward = True
    enforces_mask = False
    exact_target = False  # the sparsity reached is learned: the runner records it, no target to meet
    layer_parameters = {"s": -5.0}  # the paper's s_0 (ImageNet CNNs)
    layer_parameter_group = {}  # the optimizer's defaults: weight decay applies to s (STR / AutoSparse)
    options = {
        "steps_per_epoch": Option(check=or_from_run(integer(1), "steps_per_epoch"),
                                  help="optimizer steps per epoch: alpha changes at epoch boundaries; auto: the run's"),
        "epochs": Option(check=or_from_run(integer(1), "epochs"),
                         help="T of the decay formulas: epochs alpha decays over (training epochs); auto: the run's"),
        "alpha0": Option(0.75, number(0.0, 1.0), help="initial alpha (the paper: 0 <= alpha <= 1)"),
        "alpha_decay": Option("sigmoid_cosine", choice(*ALPHA_DECAYS), help="how alpha decays per epoch"),
        "beta": Option(1.0, number(0.0, min_open=True), help="rate of the exponential decay exp(-beta * epoch)"),
        "alpha_zero_epoch": Option(None, optional(steps(0, unit="epochs")),
                                   help="from this 0-based epoch on alpha = 0 (null: never; \"90%\": of the run's epochs)"),
        "warn_fully_pruned": Option(True, boolean, help="warn when forward finds a layer fully pruned"),
        "s0": Option(-5.0, number(), help="initial s of every layer (threshold sigmoid(s0); the paper: -5 for "
                                          "CNNs, -7/-8 elsewhere)"),
    }

    def __init__(self, **args):
        super().__init__(**args)
        if "s0" in self.options:
            self.layer_parameters = {"s": self.args.s0}  # the initial values prepare_model registers
        self.steps_begun = 0  # optimizer steps whose begin_step ran: the next forward belongs to step + 1

    # ---- gradient annealing schedule -----------------------------------------------------------

    def epoch_of(self, step: int) -> int:
        """The 0-based epoch of optimizer step ``step`` (steps count from 1)."""
        return (max(step, 1) - 1) // self.args.steps_per_epoch

    def alpha_at(self, step: int) -> float:
        """The ``alpha`` of the backward of optimizer step ``step``."""
        epoch = self.epoch_of(step)
        if self.args.alpha_zero_epoch is not None and epoch >= self.args.alpha_zero_epoch:
            return 0.0
        return self.args.alpha0 * alpha_decay(self.args.alpha_decay, epoch, self.args.epochs, self.args.beta)

    @property
    def alpha(self) -> float:
        """The ``alpha`` the next forward/backward uses (that of step ``steps_begun + 1``)."""
        return self.alpha_at(self.steps_begun + 1)

    def begin_step(self, step: int) -> None:
        self.steps_begun = step

    # ---- masks: |w| > sigmoid(s), as this step's forward saw them ---------------------------------

    def initial_change(self) -> MaskChange:
        return MaskChange.reselect(layer_counts=[layer.numel for layer in self.layers])

    def mask_change(self, step: int) -> MaskChange:
        return MaskChange.assign()

    def assign_mask(self, layer) -> torch.Tensor:
        s = torch.tensor([layer.parameters["s"]], dtype=layer.weight.dtype, device=layer.weight.device)
        return layer.weight.abs() > torch.sigmoid(s)

    # ---- forward seam ---------------------------------------------------------------------------

    def forward_weight(self, weight: torch.Tensor, parameters: Mapping[str, torch.Tensor],
                       layer: LayerInfo) -> torch.Tensor:
        threshold = torch.sigmoid(parameters["s"]).to(weight.dtype)
        transformed = gradient_annealed_threshold(weight, threshold, self.alpha)
        if self.args.warn_fully_pruned and weight.numel() and not bool(transformed.detach().any()):
            warnings.warn(f"gsparse autosparse: sparse layer '{layer.name}' is fully pruned "
                          f"(every |w| <= T = sigmoid(s) = {float(threshold.detach()):.4g}): runaway sparsity",
                          RunawaySparsity, stacklevel=2)
        return transformed

    @classmethod
    def harness_recipe(cls, total_steps: int, steps_per_epoch: int, update_interval: int) -> dict:
        """The paper's schedule on a comparison run: alpha over the run's epochs, 0 for the last 10%."""
        epochs = max(1, total_steps // steps_per_epoch)
        return {"method_args": {"steps_per_epoch": steps_per_epoch, "epochs": epochs,
                                "alpha_zero_epoch": max(1, round(0.9 * epochs))}}

    # ---- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"steps_begun": self.steps_begun}

    def load_state_dict(self, state: dict) -> None:
        self.steps_begun = int(state.get("steps_begun", 0))


class _GradientAnnealedTopK(torch.autograd.Function):
    """``w`` on the kept weights, 0 elsewhere; backward: gradient 1 on kept weights, ``alpha`` elsewhere."""

    @staticmethod
    def forward(ctx, weight, kept, alpha: float):
        ctx.save_for_backward(kept)
        ctx.alpha = alpha
        return torch.where(kept, weight, torch.zeros_like(weight))

    @staticmethod
    def backward(ctx, grad_output):
        (kept,) = ctx.saved_tensors
        return torch.where(kept, grad_output, grad_output * ctx.alpha), None, None


class TopKASTGA(AutoSparse):
    """Gradient annealing on a fixed budget (the paper's TopKAST* + GA): forward keeps each layer's
    ``target_active`` largest magnitudes of the full weight (the engine's top-k rule: ties by the lower
    flat index), the others get ``alpha`` times their gradient (TopKAST*: 0% backward sparsity, no
    penalty term); ``alpha`` follows AutoSparse's schedule. The mask is that top-k every step (an
    exact distributed reselect by ``|w|``); weights stay dense (``enforces_mask = False``)."""

    name = "topkast_ga"
    exact_target = True  # the recipe's budget every step
    layer_parameters = {}
    layer_parameter_group = {"weight_decay": 0.0}
    options = {key: option for key, option in AutoSparse.options.items() if key not in ("warn_fully_pruned", "s0")}

    def initial_change(self) -> MaskChange:
        return MaskChange.reselect(layer_counts=[layer.target_active for layer in self.layers])

    def mask_change(self, step: int) -> MaskChange:
        return MaskChange.reselect(layer_counts=[layer.target_active for layer in self.layers])

    def keep_score(self, layer) -> torch.Tensor:
        return layer.weight.abs()

    def forward_weight(self, weight: torch.Tensor, parameters: Mapping[str, torch.Tensor],
                       layer: LayerInfo) -> torch.Tensor:
        kept = reference_top_k(  # the engine's top-k rule, on the whole weight
            weight.detach().abs().float(), None, layer.target_active).view(weight.shape)
        return _GradientAnnealedTopK.apply(weight, kept, float(self.alpha))


register_method("topkast_ga", TopKASTGA)
register_method("autosparse", AutoSparse)
