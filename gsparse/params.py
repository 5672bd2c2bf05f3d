"""Which parameters of a model are sparse, and at which per-layer sparsity."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from gsparse.distributions import active_counts, layer_densities, round_half_up
from gsparse.options import RecipeError
from gsparse.selection import matrix_shape

# The attribute of a module listing the names of the method parameters gsparse registered on it
# (see gsparse.forward); a plain attribute, so copies of the model keep it.
LAYER_PARAMETER_NAMES = "_gsparse_layer_parameters"


@dataclass(frozen=True)
class SparseParamSpec:
    """One sparse parameter: its name, full shape and exact number of active weights."""

    name: str
    shape: torch.Size
    density: float
    active_count: int

    @property
    def numel(self) -> int:
        return self.shape.numel()


def select_sparse_params(named_params: list[tuple[str, torch.nn.Parameter]],
                         module_types: dict[str, list[str]], recipe) -> list[str]:
    """Names of the sparse parameters, in model order.

    Candidates are the ``weight`` of modules whose class, or one of its base classes, has its name
    in ``params.module_types`` (so subclasses of ``Linear`` count), or,
    when ``params.include`` is given, the parameters whose name matches one of its globs. Names
    matching ``params.exclude`` are removed, then the first/last candidate if asked to stay dense.
    ``module_types`` maps parameter name to the class names (with bases) of its owning module.
    """
    selection = recipe.params
    names = [name for name, _ in named_params]
    _check_patterns_match(names, selection.include, "params.include")
    _check_patterns_match(names, selection.exclude, "params.exclude")
    if selection.include:
        candidates = [n for n in names if any(fnmatchcase(n, p) for p in selection.include)]
    else:
        candidates = [n for n in names if n.rsplit(".", 1)[-1] == "weight"
                      and any(t in selection.module_types for t in module_types.get(n, ()))]
    candidates = [n for n in candidates if not any(fnmatchcase(n, p) for p in selection.exclude)]
    if selection.dense_first_layer and candidates:
        candidates = candidates[1:]
    if selection.dense_last_layer and candidates:
        candidates = candidates[:-1]
    if not candidates:
        raise RecipeError("params", "selects no parameter of this model; parameters are: " + ", ".join(names))
    return candidates


def full_shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    """The parameter's shape, also when ZeRO-3 has partitioned it away (``ds_shape``)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def sparse_param_specs(model: torch.nn.Module, recipe) -> list[SparseParamSpec]:
    """Resolve the recipe against ``model``: sparse parameters and their exact active counts."""
    # a method's own per-layer parameters (the forward seam) are never sparse themselves
    owner_type, method_parameters = {}, set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for param_name, _ in module.named_parameters(recurse=False):
            owner_type[prefix + param_name] = [cls.__name__ for cls in type(module).__mro__]
        method_parameters.update(prefix + name for name in getattr(module, LAYER_PARAMETER_NAMES, ()))
    # a method's own per-layer parameters (the forward seam) are never sparse themselves
    named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n not in method_parameters]
    names = select_sparse_params(named_params, owner_type, recipe)
    shapes = OrderedDict((n, full_shape(p)) for n, p in named_params if n in set(names))
    custom = {}
    for pattern, sparsity in recipe.layer_sparsity.items():
        matched = [n for n in shapes if fnmatchcase(n, pattern)]
        if not matched:
            raise RecipeError(f"layer_sparsity.{pattern}", "matches no sparse parameter; sparse parameters are: "
                              + ", ".join(shapes))
        custom.update({n: sparsity for n in matched})
    structure = getattr(recipe, "structure", "unstructured")
    if structure == "n_m":  # N of every M consecutive weights of a row, whatever the distribution
        n, m = recipe.n_m
        for name, shape in shapes.items():
            check_n_m_divisible(name, shape, (n, m))
        return [SparseParamSpec(name, torch.Size(shape), n / m, math.prod(shape) // m * n)
                for name, shape in shapes.items()]
    densities = layer_densities(shapes, recipe.sparsity, recipe.distribution, custom=custom,
                                erk_power_scale=recipe.erk_power_scale)
    counts = active_counts(shapes, densities)
    if structure == "fan_in":  # whole rows: the count per row, times rows
        counts = {n: shapes[n][0] * round_half_up(count / shapes[n][0]) if len(shapes[n]) else count
                  for n, count in counts.items()}
    elif structure == "block":  # whole blocks, at least one where the distribution gives any weight
        block = tuple(recipe.block_size)
        for name, shape in shapes.items():
            check_block_divisible(name, shape, block)
        size = block[0] * block[1]
        counts = {n: size * max(round_half_up(count / size), 1) if count else 0 for n, count in counts.items()}
    return [SparseParamSpec(n, torch.Size(shapes[n]), densities[n], counts[n]) for n in shapes]


def check_block_divisible(name: str, shape, block: tuple[int, int]) -> None:
    """Raise :class:`RecipeError` (key ``block_size``) unless ``block`` tiles the weight as a matrix."""
    rows, cols = matrix_shape(shape)
    if rows % block[0] or cols % block[1]:
        raise RecipeError("block_size", f"{block[0]} x {block[1]} blocks do not tile layer '{name}' of shape "
                                        f"{tuple(shape)} (a {rows} x {cols} matrix): exclude it (params.exclude) or "
                                        "pick another block_size")


def check_n_m_divisible(name: str, shape, n_m: tuple[int, int]) -> None:
    """Raise :class:`RecipeError` (key ``n_m``) unless the weight's rows (``numel // shape[0]``: the
    input dimension, in*kh*kw for a convolution) split into whole groups of M."""
    row_length = matrix_shape(shape)[1]
    if row_length % n_m[1]:
        raise RecipeError("n_m", f"{n_m[0]}:{n_m[1]} needs rows that are whole groups of {n_m[1]}; layer '{name}' of "
                                 f"shape {tuple(shape)} has rows of {row_length}: exclude it (params.exclude)")


def _check_patterns_match(names: list[str], patterns: tuple[str, ...], key: str) -> None:
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise RecipeError(key, f"pattern '{pattern}' matches no parameter; parameters are: " + ", ".join(names))
