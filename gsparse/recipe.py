"""Sparsity recipes: one YAML file (or dict) that says what is sparse, how much, and how it moves.

Every key is checked before training starts; a bad key or value raises one
:class:`~gsparse.options.RecipeError` naming the key and the allowed values.

.. code-block:: yaml

    method: dst_ee                # dst_ee | rigl | set | static | gmp | admm | any registered method
    sparsity: 0.9                 # fraction of zeros over the sparse parameters, in [0, 1)
    distribution: erk             # uniform | er | erk
    erk_power_scale: 1.0
    layer_sparsity: {}            # {parameter-name glob: sparsity}, overrides the distribution
    params:
      module_types: [Linear, Conv1d, Conv2d, Conv3d]  # whose .weight is sparse (class names)
      include: []                 # globs over parameter names; if given, replaces module_types
      exclude: []                 # globs over parameter names kept dense
      dense_first_layer: false
      dense_last_layer: false
    schedule:
      update_interval: 100        # ΔT, in optimizer steps
      first_update_step: null     # default: update_interval
      last_update_step: null      # default: update until training ends
      drop_fraction: 0.3
      drop_fraction_decay: constant # constant | cosine | linear (needs last_update_step)
      final_drop_fraction: 0.0
    method_args: {}               # the method's own options (see its class)
    seed: 0
    mask_weights_after_step: auto # auto | always: auto skips it for optimizers that provably
                                  # keep inactive weights zero (torch SGD, Adam, AdamW, ...)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from gsparse.distributions import DISTRIBUTIONS
from gsparse.methods import available_methods, get_method
from gsparse.options import (Option, RecipeError, boolean, choice, integer, mapping_of, number,
                             optional, resolve_options, string_list)
from gsparse.schedules import DROP_FRACTION_DECAYS, UpdateSchedule

DEFAULT_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")

_PARAMS_OPTIONS = {
    "module_types": Option(DEFAULT_MODULE_TYPES, string_list),
    "include": Option((), string_list),
    "exclude": Option((), string_list),
    "dense_first_layer": Option(False, boolean),
    "dense_last_layer": Option(False, boolean),
}
_SCHEDULE_OPTIONS = {
    "update_interval": Option(100, integer(1)),
    "first_update_step": Option(None, optional(integer(1))),
    "last_update_step": Option(None, optional(integer(1))),
    "drop_fraction": Option(0.3, number(0.0, 1.0)),
    "drop_fraction_decay": Option("constant", choice(*DROP_FRACTION_DECAYS)),
    "final_drop_fraction": Option(0.0, number(0.0, 1.0)),
}
_RECIPE_OPTIONS = {
    "method": Option(check=lambda key, value: choice(*available_methods())(key, value)),
    "sparsity": Option(check=number(0.0, 1.0, max_open=True)),
    "distribution": Option("uniform", choice(*DISTRIBUTIONS)),
    "erk_power_scale": Option(1.0, number(0.0, min_open=True)),
    "layer_sparsity": Option({}, mapping_of(number(0.0, 1.0))),
    "params": Option(None),
    "schedule": Option(None),
    "method_args": Option(None),
    "seed": Option(0, integer(0)),
    "mask_weights_after_step": Option("auto", choice("auto", "always")),
}


@dataclass(frozen=True)
class ParamSelection:
    """Which parameters are sparse; see :func:`gsparse.params.select_sparse_params`."""

    module_types: tuple[str, ...] = DEFAULT_MODULE_TYPES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    dense_first_layer: bool = False
    dense_last_layer: bool = False


@dataclass(frozen=True)
class Recipe:
    """A validated sparsity recipe. Build with :func:`load_recipe`."""

    method: str
    sparsity: float
    distribution: str
    erk_power_scale: float
    layer_sparsity: Mapping[str, float]
    params: ParamSelection
    schedule: UpdateSchedule
    method_args: Mapping[str, Any]
    seed: int
    mask_weights_after_step: str
    source: dict  # the recipe as given, for checkpoints and logs

    @property
    def method_class(self):
        return get_method(self.method)

    def build_method(self):
        return self.method_class(**self.method_args)


def load_recipe(recipe: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """Validate a recipe given as a YAML path, a YAML string, a dict or a :class:`Recipe`."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        if _is_file(recipe):
            text = Path(recipe).read_text()
        elif isinstance(recipe, str) and ("\n" in recipe or ":" in recipe):
            text = recipe  # YAML given inline
        else:
            raise FileNotFoundError(f"recipe file not found: {recipe}")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise RecipeError("<file>", f"not valid YAML: {error}") from None
    else:
        data = recipe
    if not isinstance(data, Mapping):
        raise RecipeError("<root>", f"expected a mapping of recipe keys, got {data!r}")
    source = copy.deepcopy(dict(data))
    top = resolve_options(data, _RECIPE_OPTIONS, "")
    params = ParamSelection(**resolve_options(top["params"], _PARAMS_OPTIONS, "params."))
    schedule_args = resolve_options(top["schedule"], _SCHEDULE_OPTIONS, "schedule.")
    schedule = _build_schedule(schedule_args)
    method_class = get_method(top["method"])
    if method_class.needs_last_update_step and schedule.last_update_step is None:
        raise RecipeError("schedule.last_update_step", f"method '{top['method']}' needs it (the end of its schedule)")
    method_args = resolve_options(top["method_args"], method_class.options, "method_args.")
    return Recipe(
        method=top["method"], sparsity=top["sparsity"], distribution=top["distribution"],
        erk_power_scale=top["erk_power_scale"], layer_sparsity=top["layer_sparsity"], params=params,
        schedule=schedule, method_args=method_args, seed=top["seed"],
        mask_weights_after_step=top["mask_weights_after_step"], source=source,
    )


def _is_file(candidate: str | Path) -> bool:
    if isinstance(candidate, str) and "\n" in candidate:
        return False
    try:
        return Path(candidate).is_file()
    except OSError:  # e.g. a name too long to be a path
        return False


def _build_schedule(args: dict[str, Any]) -> UpdateSchedule:
    first = args["first_update_step"] or args["update_interval"]
    last = args["last_update_step"]
    if last is not None and last < first:
        raise RecipeError("schedule.last_update_step", f"must be >= first_update_step ({first}), got {last}")
    if args["drop_fraction_decay"] != "constant" and last is None:
        raise RecipeError(
            "schedule.drop_fraction_decay",
            f"'{args['drop_fraction_decay']}' needs schedule.last_update_step; set it or use 'constant'",
        )
    return UpdateSchedule(
        update_interval=args["update_interval"], first_update_step=first, last_update_step=last,
        drop_fraction=args["drop_fraction"], drop_fraction_decay=args["drop_fraction_decay"],
        final_drop_fraction=args["final_drop_fraction"],
    )
