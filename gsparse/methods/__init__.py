"""Sparse-training methods by recipe name; see :mod:`gsparse.methods.base` for the contract."""
from gsparse.methods.admm import ADMM
from gsparse.methods.base import DropGrowMethod, LayerInfo, LayerView, MaskChange, PruneFromDenseMethod, SparseMethod
from gsparse.methods.dst_ee import DSTEE
from gsparse.methods.gmp import GMP
from gsparse.methods.registry import METHODS, available_methods, get_method, register_method
from gsparse.methods.rigl import RigL
from gsparse.methods.set import SET
from gsparse.methods.static import Static

for _cls in (DSTEE, RigL, SET, Static, GMP, ADMM):
    register_method(_cls.name, _cls)

# The methods of the other seed papers register themselves on import (after the ones above, so
# that error messages list the flagship first).
from gsparse.methods.acdc import ACDC  # noqa: E402
from gsparse.methods.autosparse import AutoSparse, TopKASTGA  # noqa: E402
from gsparse.methods.mest import MEST  # noqa: E402
from gsparse.methods.optg import OptG  # noqa: E402
from gsparse.methods.snip import SNIP  # noqa: E402

__all__ = ["METHODS", "ACDC", "ADMM", "AutoSparse", "TopKASTGA", "DSTEE", "DropGrowMethod", "GMP", "LayerInfo", "LayerView", "MaskChange", "MEST", "OptG",
           "PruneFromDenseMethod", "RigL", "SET", "SNIP", "SparseMethod", "Static", "available_methods", "get_method",
           "register_method"]
