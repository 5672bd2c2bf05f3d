"""OptG, optimizing gradient-driven sparsity (Zhang et al., "Optimizing Gradient-driven Criteria in
Network Sparsity"): supermask training interleaved with weight training.

Rules implemented (Algorithm 1, Eqs. 10-12 and 16-17 of the paper):

* Every weight has a continuous mask score ``m^`` (per-weight state ``score``, sharded like the
  mask), updated at every training step, pruned weights too, by
  ``m^ <- m^ - eta_k * dL/d(m * w) * w`` - the gradient of the loss with respect to the weight the
  network uses (the engine's dense gradient before masking) times the weight's value. A pruned
  weight keeps its value while pruned (``dormant_weights``: forward sees ``m * w = 0``; the value
  comes back when the weight is revived), so its score keeps measuring what reviving it would do.
* The binary mask changes only at the start of each epoch: the weights with the highest ``m^`` over
  all layers at once are kept (a global sort: layer budgets emerge), the sparse rate following the
  sigmoid ``P_k = P / (1 + exp(-alpha (k - tau / 2)))`` (Eq. 16) for epoch ``k`` of ``tau``, with
  ``P`` the recipe's sparsity over the sparse layers (the recipe's total count).
* The mask learning rate follows the same sigmoid: ``eta_k = eta_w / (1 + exp(-alpha (k - tau/2)))``
  (Eq. 17). A constant ``eta_w`` is a common factor of every score and does not change which weights
  are kept, so it is the option ``mask_lr`` (default 1); the weights' own learning-rate schedule is
  not followed (only the sigmoid is).
* ``m^`` starts at 0 (Algorithm 1); epoch 1 trains dense (``P_1`` is close to 0; the paper's ``h`` of an
  all-zero ``m^`` would keep an arbitrary set), and the first binarisation is at the start of epoch 2.
  The final sparsity is ``P_tau = P / (1 + exp(-alpha tau / 2))`` (within 1e-9 of ``P`` for the
  paper's alpha = 0.5 and tau >= 100 epochs).
"""
from __future__ import annotations

import math

import torch

from gsparse.methods.base import LayerView, MaskChange, SparseMethod
from gsparse.methods.registry import register_method
from gsparse.options import Option, RunProblem, integer, number, or_from_run


class OptG(SparseMethod):
    name = "optg"
    options = {
        "steps_per_epoch": Option(check=or_from_run(integer(1), "steps_per_epoch"),
                                  help="optimizer steps per epoch (the mask changes at epoch starts); auto: the run's"),
        "epochs": Option(check=or_from_run(integer(1), "epochs"),
                         help="tau: the training epochs the sparsity schedule spans; auto: the run's epochs"),
        "alpha": Option(0.5, number(0.0, min_open=True), help="steepness of the sigmoid schedules (paper: 0.5)"),
        "mask_lr": Option(1.0, number(0.0, min_open=True), help="eta_w of Eq. 17 (a constant scales every score alike)"),
    }
    observes = needs_grad = True
    dormant_weights = True
    per_weight_state = {"score": torch.float32}

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch ``k`` of optimizer step ``step``."""
        return (max(step, 1) - 1) // self.args.steps_per_epoch + 1

    def sigmoid(self, epoch: int) -> float:
        return 1.0 / (1.0 + math.exp(-self.args.alpha * (epoch - 0.5 * self.args.epochs)))

    def active_total(self, epoch: int) -> int:
        """Active weights over all sparse layers in ``epoch`` (Eq. 16, relative to the recipe's total)."""
        numel = sum(layer.numel for layer in self.layers)
        target = sum(layer.target_active for layer in self.layers)
        return numel - round(self.sigmoid(epoch) * (numel - target))

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        """The run must reach epoch tau (and epoch 2, the first binarisation); a sigmoid still short of
        the target sparsity in the run's last epoch is a warning (the paper's tau >= 100 ends within 1e-9)."""
        last_epoch, tau = self.epoch_of(total_steps), self.args.epochs
        reached = self.sigmoid(last_epoch)
        if last_epoch < max(tau, 2):
            return [RunProblem("method_args.epochs", f"OptG reaches its target sparsity in epoch tau = {tau} (the mask "
                               f"first changes in epoch 2) but the run ({total_steps:,} steps of "
                               f"{self.args.steps_per_epoch:,} per epoch) ends in epoch {last_epoch}: it would end "
                               f"near sparsity {recipe.sparsity * reached if last_epoch > 1 else 0.0:.3f}, not "
                               f"{recipe.sparsity}; use epochs: auto")]
        if reached < 0.999:
            return [RunProblem("method_args.alpha", f"OptG's sigmoid is at {reached:.4f} in the run's last epoch "
                               f"({last_epoch}, alpha {self.args.alpha}): the run would end near sparsity "
                               f"{recipe.sparsity * reached:.3f}, not {recipe.sparsity}", error=False)]
        return []

    def initial_change(self) -> MaskChange:
        return MaskChange.reselect(layer_counts=[layer.numel for layer in self.layers])  # epoch 1: dense

    def mask_change(self, step: int) -> MaskChange | None:
        if step > 1 and (step - 1) % self.args.steps_per_epoch == 0:  # the first step of epoch k >= 2
            return MaskChange.reselect(total=self.active_total(self.epoch_of(step)))
        return None

    def forced_change(self, step: int) -> MaskChange | None:
        return MaskChange.reselect(total=self.active_total(self.epoch_of(step)))

    def observe(self, layers: list[LayerView]) -> None:
        if not layers:
            return
        rate = self.args.mask_lr * self.sigmoid(self.epoch_of(layers[0].step))
        for layer in layers:
            value = torch.where(layer.mask, layer.weight, layer.state["dormant"])  # m * w for kept, w for pruned
            layer.state["score"].sub_(rate * layer.grad * value)

    def keep_score(self, layer: LayerView) -> torch.Tensor:
        return layer.state["score"]

    @classmethod
    def harness_recipe(cls, total_steps: int, steps_per_epoch: int, update_interval: int) -> dict:
        return {"method_args": {"steps_per_epoch": steps_per_epoch,
                                "epochs": max(1, total_steps // steps_per_epoch)}}


register_method("optg", OptG)
