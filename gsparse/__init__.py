"""gsparse: dynamic sparse training (DST-EE, RigL, SET, GMP, ADMM, ...) for PyTorch and DeepSpeed.

The core (this package's engine, methods, selection, backends, distributions, schedules and
recipes) needs only torch, numpy and pyyaml; DeepSpeed (``gsparse.deepspeed``), the training
runner and the tasks are layers above it.
"""
from gsparse.distributions import active_counts, layer_densities
from gsparse.forward import prepare_model
from gsparse.methods import METHODS, MaskChange, SparseMethod, register_method
from gsparse.options import RecipeError, RecipeWarning
from gsparse.recipe import Recipe, load_recipe
from gsparse.sparsifier import Sparsifier

__version__ = "0.1.0"

__all__ = ["METHODS", "MaskChange", "Recipe", "RecipeError", "RecipeWarning", "SparseMethod", "Sparsifier", "active_counts",
           "layer_densities", "load_recipe", "prepare_model", "register_method", "__version__"]
