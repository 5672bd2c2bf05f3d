"""SNIP, single-shot network pruning (Lee, Ajanthan & Torr, ICLR 2019): prune once, at
initialisation, by connection sensitivity, then train with the mask fixed.

Rules implemented:

* The connection sensitivity of weight ``j`` on a batch is ``|g_j * w_j|`` (``g = dL/dw``; the
  paper's normalisation by the sum over all weights does not change the ranking and is left out).
* The run starts dense. During steps ``1..score_batches`` the sensitivity is accumulated into the
  per-weight state ``score``: ``score_accumulation: absolute`` sums ``|g_b * w_b|`` over the
  batches; ``gradient`` sums the signed ``g_b * w_b`` and ranks its magnitude, i.e. SNIP on the
  union of the batches (the same thing when ``score_batches`` is 1, the paper's setting).
* SNIP scores the *initial* weights and does not train them: in the scoring steps the gradient of
  every sparse weight is cancelled (a gradient term ``-g``), so the optimizer sees zero gradient.
  Optimizers that move a weight with zero gradient and zero state still do (AdamW's decoupled
  weight decay, SGD's ``weight_decay``); plain SGD (with or without momentum), Adam and AdamW with
  ``weight_decay: 0`` keep the sparse weights exactly at their initial values. Dense parameters
  (biases, norms) are not sparse layers and are trained in the scoring steps.
* At the start of step ``score_batches + 1`` the mask becomes the global top ``sum of the recipe's
  per-layer counts`` by score over all sparse layers (exact distributed top-k, ties by layer then
  index), so per-layer budgets emerge from the scores; it never changes again.
"""
from __future__ import annotations

import torch

from gsparse.methods.base import LayerView, MaskChange, SparseMethod
from gsparse.methods.registry import register_method
from gsparse.options import Option, RunProblem, choice, integer


class SNIP(SparseMethod):
    name = "snip"
    options = {
        "score_batches": Option(1, integer(1), "batches (optimizer steps, weights held) whose sensitivity is "
                                               "accumulated before the one-shot prune"),
        "score_accumulation": Option("absolute", choice("absolute", "gradient"),
                                     "absolute: sum of |g*w| per batch; gradient: |sum of g*w| (SNIP on the "
                                     "union of the batches)"),
    }
    observes = needs_grad = True
    shapes_gradients = True
    per_weight_state = {"score": torch.float32}

    @property
    def prune_step(self) -> int:
        """The step at whose start the one-shot global selection happens."""
        return self.args.score_batches + 1

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        if self.prune_step <= total_steps:
            return []
        return [RunProblem("method_args.score_batches", f"SNIP prunes at step {self.prune_step:,} but the run has "
                           f"{total_steps:,} steps: the model would end dense")]

    def is_scoring_step(self, step: int) -> bool:
        return step < self.prune_step

    def initial_change(self) -> MaskChange:
        return MaskChange.reselect(layer_counts=[layer.numel for layer in self.layers])  # dense

    def observe(self, layers: list[LayerView]) -> None:
        if not layers or not self.is_scoring_step(layers[0].step):
            return
        for layer in layers:
            sensitivity = layer.weight * layer.grad
            if self.args.score_accumulation == "absolute":
                sensitivity = sensitivity.abs()
            layer.state["score"].add_(sensitivity)

    def gradient_terms(self, layers: list[LayerView], select) -> list[torch.Tensor | None]:
        if not layers or not self.is_scoring_step(layers[0].step):
            return [None] * len(layers)
        return [-layer.grad for layer in layers]  # the optimizer sees a zero gradient: weights stay

    def mask_change(self, step: int) -> MaskChange | None:
        if step == self.prune_step:
            return MaskChange.reselect(total=sum(layer.target_active for layer in self.layers))
        return None

    def forced_change(self, step: int) -> MaskChange | None:
        return None  # one shot, keyed to its step: an update outside the schedule changes nothing

    def keep_score(self, layer: LayerView) -> torch.Tensor:
        return layer.state["score"].abs()


register_method("snip", SNIP)
