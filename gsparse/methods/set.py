"""SET (Mocanu et al. 2018): drop by magnitude, grow at random."""
from gsparse.methods.base import DropGrowMethod, LayerView


class SET(DropGrowMethod):
    name = "set"

    def grow_score(self, layer: LayerView):
        return layer.uniform()
