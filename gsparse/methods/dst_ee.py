"""DST-EE (exploitation + exploration): RigL's gradient score plus an exploration bonus.

Grow score (Eq. 1 of the paper): ``|grad| + c_t * ln(t) / (N + eps)``, with ``t`` the optimizer
step and ``N`` the counter of how many mask states had the weight active (initialised to the
first mask, increased by the mask after every update). ``score_variant: reference`` ranks
``|grad + c_t * ln(t) / (N + eps)|`` as the authors' graph scripts do. ``c_t`` is ``c`` multiplied
by ``c_decay_factor`` every ``c_decay_interval`` steps.
"""
import math

from gsparse.methods.base import LayerView
from gsparse.methods.rigl import RigL
from gsparse.options import Option, choice, integer, number


class DSTEE(RigL):
    name = "dst_ee"
    options = {
        "c": Option(0.01, number(0.0), "weight of the exploration term"),
        "eps": Option(1.0, number(0.0, min_open=True), "added to the counter in the denominator"),
        "c_decay_factor": Option(1.0, number(0.0, 1.0, min_open=True), "multiply c by this every c_decay_interval steps (1: no decay)"),
        "c_decay_interval": Option(1000, integer(1), "steps between two decays of c"),
        "score_variant": Option("paper", choice("paper", "reference"), "paper: |g| + bonus; reference: |g + bonus|"),
    }

    def exploration_coefficient(self, step: int) -> float:
        return self.args.c * self.args.c_decay_factor ** (step // self.args.c_decay_interval)

    def grow_score(self, layer: LayerView):
        bonus = self.exploration_coefficient(layer.step) * math.log(layer.step) / (layer.counter.float() + self.args.eps)
        if self.args.score_variant == "reference":
            return (layer.grad + bonus).abs()
        return layer.grad.abs() + bonus
