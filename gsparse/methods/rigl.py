"""RigL (Evci et al. 2020): drop by magnitude, grow by the magnitude of the dense gradient."""
from gsparse.methods.base import DropGrowMethod, LayerView


class RigL(DropGrowMethod):
    name = "rigl"
    needs_grad = True

    def grow_score(self, layer: LayerView):
        return layer.grad.abs()
