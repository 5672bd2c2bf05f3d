"""Sparse-training methods by recipe name."""
from gsparse.methods.admm import ADMM
from gsparse.methods.base import DropGrowMethod, LayerView
from gsparse.methods.dst_ee import DSTEE
from gsparse.methods.gmp import GMP
from gsparse.methods.rigl import RigL
from gsparse.methods.set import SET
from gsparse.methods.static import Static

METHODS: dict[str, type[DropGrowMethod]] = {cls.name: cls for cls in (DSTEE, RigL, SET, Static, GMP, ADMM)}

__all__ = ["METHODS", "DropGrowMethod", "LayerView", "ADMM", "DSTEE", "GMP", "RigL", "SET", "Static"]
