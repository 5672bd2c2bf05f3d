"""gsparse: dynamic sparse training (DST-EE, RigL, SET, static) for PyTorch and DeepSpeed."""
from gsparse.distributions import active_counts, layer_densities
from gsparse.methods import METHODS
from gsparse.options import RecipeError
from gsparse.recipe import Recipe, load_recipe
from gsparse.sparsifier import Sparsifier

__version__ = "0.1.0"

__all__ = ["METHODS", "Recipe", "RecipeError", "Sparsifier", "active_counts", "layer_densities", "load_recipe",
           "__version__"]
