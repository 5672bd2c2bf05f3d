"""ADMM prune-from-dense (the DST-EE paper's baseline): dense pretraining, ADMM-regularised
("reweighted") training towards the target sparsity, a hard magnitude prune, then retraining with
the mask fixed.

During the ADMM phase each sparse layer's gradient gets ``rho * (W - Z + U)``, the gradient of
``rho/2 * ||W - Z + U||^2``. At the phase's first step ``Z = P(W)``, ``U = 0``; every
``admm_interval`` steps after that ``Z = P(W + U)`` and ``U += W - Z`` (and ``rho *= rho_growth``),
where ``P`` keeps each layer's ``target`` largest magnitudes (the exact top-k shared with every
other method, so Z and U are sharded like the weights). At step ``pretrain_steps + admm_steps + 1``
each layer is pruned by magnitude to its target; the mask stays fixed afterwards. The phases may
be given as fractions of the run (``pretrain_steps: "30%"``); a prune step after the run's end is
refused before training (the model would end dense). ``rho`` is at most ``MAX_RHO`` (1e6), also
after its growth: ``rho * rho_growth ** (rounds - 1) <= MAX_RHO``, so the penalty gradient stays
finite in float32 (a larger ``rho`` only pins ``W`` to ``Z - U`` harder).
"""
import math

import torch

from gsparse.methods.base import LayerView, PruneFromDenseMethod
from gsparse.options import Option, RecipeError, RunProblem, number, steps

MAX_RHO = 1e6


class ADMM(PruneFromDenseMethod):
    name = "admm"
    shapes_gradients = True
    per_weight_state = {"Z": torch.float32, "U": torch.float32}
    options = {
        "pretrain_steps": Option(check=steps(0)),
        "admm_steps": Option(check=steps(1)),
        "admm_interval": Option(check=steps(1)),
        "rho": Option(0.01, number(0.0, MAX_RHO, min_open=True)),
        "rho_growth": Option(1.0, number(1.0, MAX_RHO)),
    }

    def __init__(self, **args):
        super().__init__(**args)
        self.rho = self.args.rho
        rounds = -(-self.args.admm_steps // self.args.admm_interval)
        log_final = math.log(self.args.rho) + (rounds - 1) * math.log(self.args.rho_growth)
        if log_final > math.log(MAX_RHO) + 1e-9:
            bound = math.exp((math.log(MAX_RHO) - math.log(self.args.rho)) / (rounds - 1))
            raise RecipeError("method_args.rho_growth", f"{self.args.rho_growth} grows rho {self.args.rho} over "
                              f"{rounds} ADMM rounds (admm_steps {self.args.admm_steps:,} / admm_interval "
                              f"{self.args.admm_interval:,}) to {self.args.rho} x {self.args.rho_growth}^{rounds - 1} "
                              f"> {MAX_RHO:g}; allowed: rho x rho_growth^(rounds - 1) <= {MAX_RHO:g}, here "
                              f"rho_growth <= {bound:.6g}")

    @property
    def prune_step(self) -> int:
        return self.args.pretrain_steps + self.args.admm_steps + 1

    @property
    def first_admm_step(self) -> int:
        return self.args.pretrain_steps + 1

    def pruned_fraction(self, step: int) -> float:
        return 0.0 if step < self.prune_step else 1.0

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        if self.prune_step <= total_steps:  # the prune step trains with the mask: >= 1 fine-tune step
            return []
        return [RunProblem("method_args.admm_steps", f"ADMM prunes at step {self.prune_step:,} (pretrain_steps "
                           f"{self.args.pretrain_steps:,} + admm_steps {self.args.admm_steps:,} + 1) but the run has "
                           f"{total_steps:,} steps: the model would end dense; give the phases as fractions of "
                           f"the run (e.g. \"33%\")")]

    def is_update_step(self, step: int) -> bool:
        return step == self.prune_step

    def _is_round(self, step: int) -> bool:
        return self.first_admm_step <= step < self.prune_step and \
            (step - self.first_admm_step) % self.args.admm_interval == 0

    def begin_step(self, step: int) -> None:
        # rho is one number for the whole model: it grows once per round, however many
        # parameter groups (ZeRO step groups) the round's projections are split into.
        if self._is_round(step) and step > self.first_admm_step:
            self.rho *= self.args.rho_growth

    def gradient_terms(self, layers: list[LayerView], select) -> list[torch.Tensor | None]:
        if not layers or not self.first_admm_step <= layers[0].step < self.prune_step:
            return [None] * len(layers)
        if self._is_round(layers[0].step):
            self._admm_round(layers, select, first_round=layers[0].step == self.first_admm_step)
        return [self.rho * (layer.weight - layer.state["Z"] + layer.state["U"]) for layer in layers]

    def _admm_round(self, layers: list[LayerView], select, first_round: bool) -> None:
        """Z <- P(W + U), U <- U + W - Z (the first round: Z <- P(W), U = 0)."""
        if first_round:
            for layer in layers:
                layer.state["U"].zero_()
        targets = [layer.weight + layer.state["U"] for layer in layers]
        keep = select([target.abs() for target in targets], [None] * len(layers),
                      [layer.target_active for layer in layers])
        for layer, target, kept in zip(layers, targets, keep):
            layer.state["Z"].copy_(target * kept)
            if not first_round:
                layer.state["U"].add_(layer.weight - layer.state["Z"])

    def state_dict(self) -> dict:
        return {"rho": self.rho}

    def load_state_dict(self, state: dict) -> None:
        self.rho = state.get("rho", self.args.rho)
