"""Static sparsity: the initial mask never changes. It is random (per-layer distributed), or the
largest weights by magnitude when training starts - a sparse pretrained model's own non-zeros, or
one-shot magnitude pruning of a dense one (sparse fine-tuning with a fixed mask)."""
import torch

from gsparse.methods.base import LayerView, SparseMethod
from gsparse.options import Option, choice


class Static(SparseMethod):
    name = "static"
    supports_fan_in = True
    options = {
        "initial_mask": Option("random", choice("random", "magnitude"),
                               "random: a random mask; magnitude: each layer's largest weights at the start"),
    }

    def initial_score(self, layer: LayerView) -> torch.Tensor | None:
        return layer.weight.abs() if self.args.initial_mask == "magnitude" else None
