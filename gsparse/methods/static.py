"""Static sparsity: the initial (random, per-layer distributed) mask never changes."""
from gsparse.methods.base import SparseMethod


class Static(SparseMethod):
    name = "static"
    supports_fan_in = True
