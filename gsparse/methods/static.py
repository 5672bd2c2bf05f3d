"""Static sparsity: the initial (random, per-layer distributed) mask never changes."""
from gsparse.methods.base import DropGrowMethod


class Static(DropGrowMethod):
    name = "static"
    updates_mask = False
