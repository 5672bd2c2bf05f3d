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
      update_interval: 100        # ΔT, in optimizer steps (or "2%": of the run's steps)
      first_update_step: null     # default: update_interval
      last_update_step: null      # default: update until training ends; e.g. "75%"
      drop_fraction: 0.3
      drop_fraction_decay: constant # constant | cosine | linear (needs last_update_step)
      final_drop_fraction: 0.0
    method_args: {}               # the method's own options (see its class)
    seed: 0
    mask_weights_after_step: auto # auto | always: auto skips it for optimizers that provably
                                  # keep inactive weights zero (torch SGD, Adam, AdamW, ...)
    execution: dense              # dense | sparse | auto: run sparse linear layers with CSR kernels
                                  # (auto: per layer, where a one-time micro-benchmark says it pays)
    structure: unstructured       # unstructured | fan_in: every output (row) keeps the same number
                                  # of active inputs, through every update (SRigL's constant fan-in)
                                  # | block: masks are whole blocks of the weight as a matrix
                                  # | n_m: N active in every M consecutive weights of a row (2:4)
    block_size: 4                 # structure: block: b (b x b blocks) or [rows, cols]
    n_m: [2, 4]                   # structure: n_m: [N, M], 1 <= N < M; sparsity must be 1 - N/M

Run-relative values: every step count (the schedule's, and a method's such as ADMM's phases or
MEST's milestones) may be ``"N%"`` of the run's optimizer steps, and the epoch-keyed methods'
``steps_per_epoch`` / ``epochs`` / ``total_epochs`` may be ``auto``. :func:`load_recipe` keeps them;
:meth:`Recipe.fit_to_run` (called by the training runner, or by ``Sparsifier(..., total_steps=)``)
makes them integers and checks that the recipe fits the run.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from gsparse.distributions import DISTRIBUTIONS, round_half_up
from gsparse.methods import available_methods, get_method
from gsparse.methods.base import DropGrowMethod
from gsparse.options import (RUN_RELATIVE, FromRun, Option, RecipeError, RecipeWarning, boolean, choice,
                             integer, mapping_of, number, optional, resolve_options, steps, string_list)
from gsparse.schedules import DROP_FRACTION_DECAYS, UpdateSchedule

DEFAULT_MODULE_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")
STRUCTURES = ("unstructured", "fan_in", "block", "n_m")

_PARAMS_OPTIONS = {
    "module_types": Option(DEFAULT_MODULE_TYPES, string_list),
    "include": Option((), string_list),
    "exclude": Option((), string_list),
    "dense_first_layer": Option(False, boolean),
    "dense_last_layer": Option(False, boolean),
}
_SCHEDULE_OPTIONS = {
    "update_interval": Option(100, steps(1)),
    "first_update_step": Option(None, optional(steps(1))),
    "last_update_step": Option(None, optional(steps(1))),
    "drop_fraction": Option(0.3, number(0.0, 1.0)),
    "drop_fraction_decay": Option("constant", choice(*DROP_FRACTION_DECAYS)),
    "final_drop_fraction": Option(0.0, number(0.0, 1.0)),
}
DEFAULT_BLOCK_SIZE = (4, 4)
DEFAULT_N_M = (2, 4)


def _block_size(key: str, value: Any) -> tuple[int, int]:
    """``b`` (a ``b x b`` block) or ``[rows, cols]``, positive integers."""
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or \
            any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in pair):
        raise RecipeError(key, f"expected a positive integer b (b x b blocks) or a list [rows, cols] of two, "
                               f"got {value!r}")
    return int(pair[0]), int(pair[1])


def _n_m(key: str, value: Any) -> tuple[int, int]:
    """``[N, M]``: integers with ``1 <= N < M``."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or \
            any(isinstance(n, bool) or not isinstance(n, int) for n in value) or not 1 <= value[0] < value[1]:
        raise RecipeError(key, f"expected [N, M], integers with 1 <= N < M (N active in every M consecutive weights "
                               f"of a row, e.g. [2, 4]), got {value!r}")
    return int(value[0]), int(value[1])


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
    "execution": Option("dense", choice("dense", "sparse", "auto")),
    "structure": Option("unstructured", choice(*STRUCTURES)),
    "block_size": Option(None, optional(_block_size)),  # None: DEFAULT_BLOCK_SIZE
    "n_m": Option(None, optional(_n_m)),  # None: DEFAULT_N_M
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
    source: dict  # the recipe as given (fitted: with the run's integers), for checkpoints and logs
    # set by fit_to_run: {"total_steps", "steps_per_epoch", "resolved": {key: {"given", "value"}}}
    fitted_to: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)
    execution: str = "dense"  # see gsparse.kernels.execution
    structure: str = "unstructured"  # or "fan_in": the same active count in every row of a layer; "block"
    block_size: tuple[int, int] = DEFAULT_BLOCK_SIZE  # (rows, cols) of a block, with structure "block"
    n_m: tuple[int, int] = DEFAULT_N_M  # (N, M): N active in every M consecutive weights of a row, with "n_m"

    @property
    def method_class(self):
        return get_method(self.method)

    def build_method(self):
        self.require_fitted()
        return self.method_class(**self.method_args)

    def run_relative_keys(self) -> list[str]:
        """The keys still given relative to the run (``"N%"``, ``auto``); :meth:`fit_to_run` resolves them."""
        return _unique([key for key, *_ in _run_relative_values(self)])

    def require_fitted(self) -> None:
        """Raise :class:`RecipeError` naming the first key still relative to the run."""
        for key, _, _, _, value in _run_relative_values(self):
            needs = "total_steps= and steps_per_epoch=" if isinstance(value, FromRun) or value.unit == "epochs" \
                else "total_steps="
            raise RecipeError(key, f"is '{value}', relative to the run: pass {needs} (the run's optimizer "
                                   "steps) to gsparse.Sparsifier / gsparse.deepspeed.attach or initialize, or "
                                   "use recipe.fit_to_run(total_steps, steps_per_epoch)")

    def fit_to_run(self, total_steps: int, steps_per_epoch: int | None = None) -> "Recipe":
        """This recipe for a run of ``total_steps`` optimizer steps (``steps_per_epoch`` per epoch).

        Every ``"N%"`` becomes ``round_half_up(N/100 * total_steps)`` (of the run's epochs for
        epoch-valued keys), at least 1 where the key needs it; ``auto`` becomes the run's
        ``steps_per_epoch`` or its epochs (``ceil(total_steps / steps_per_epoch)``). The result is
        validated like any recipe, then the method checks that it fits the run
        (:meth:`gsparse.methods.SparseMethod.check_run`): an error raises :class:`RecipeError`,
        a warning is issued as a :class:`~gsparse.options.RecipeWarning`.
        """
        for name, value in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"fit_to_run: {name} must be a positive integer, got {value!r}")
        run_epochs = None if steps_per_epoch is None else math.ceil(total_steps / steps_per_epoch)
        source = copy.deepcopy(self.source)
        resolved = {}
        for key, section, name, index, value in _run_relative_values(self):
            number = _resolve(key, value, total_steps, steps_per_epoch, run_epochs)
            given = source[section][name]
            if index is not None and isinstance(given, (list, tuple)):
                given = list(given)
                given[index] = number
                source[section][name] = given
                resolved[f"{key}[{index}]"] = {"given": str(value), "value": number}
            else:
                source[section][name] = number
                resolved[key] = {"given": str(value), "value": number}
        fitted = dataclasses.replace(load_recipe(source), fitted_to={
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "resolved": resolved})
        problems = fitted.build_method().check_run(fitted, total_steps)
        for problem in problems:
            if problem.error:
                raise RecipeError(problem.key, problem.message)
        for problem in problems:
            warnings.warn(f"recipe key '{problem.key}': {problem.message}", RecipeWarning, stacklevel=2)
        return fitted


def load_recipe(recipe: str | Path | Mapping[str, Any] | Recipe) -> Recipe:
    """Validate a recipe given as a YAML path, a YAML string, a dict or a :class:`Recipe`."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, Path)):
        if _is_file(recipe):
            text, where = Path(recipe).read_text(), str(recipe)
        elif isinstance(recipe, str) and ("\n" in recipe or ":" in recipe):
            text, where = recipe, "<inline YAML>"  # YAML given inline
        else:
            raise FileNotFoundError(f"recipe file not found: {recipe}")
        data = _load_yaml(text, where)
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
    if top["execution"] == "sparse" and method_class.sparse_execution_problem():
        raise RecipeError("execution", f"'sparse' needs a method that keeps its layers sparse between mask "
                                       f"changes; {method_class.sparse_execution_problem()}: use dense or auto")
    if top["structure"] == "fan_in" and not method_class.supports_fan_in:
        raise RecipeError("structure", f"'fan_in' needs a method whose mask changes keep every row's active count "
                                       f"(rigl, dst_ee, set, static and other drop/grow methods); "
                                       f"'{top['method']}' is not one")
    if top["structure"] == "block" and not method_class.supports_fan_in:
        raise RecipeError("structure", f"'block' needs a method whose mask changes are per-layer swaps or "
                                       f"selections (rigl, dst_ee, set, static and other drop/grow methods); "
                                       f"'{top['method']}' is not one")
    if top["block_size"] is not None and top["structure"] != "block":
        raise RecipeError("block_size", f"is given, but structure is '{top['structure']}': it applies to "
                                        "structure: block only")
    n_m = top["n_m"] or DEFAULT_N_M
    if top["n_m"] is not None and top["structure"] != "n_m":
        raise RecipeError("n_m", f"is given, but structure is '{top['structure']}': it applies to structure: n_m only")
    if top["structure"] == "n_m":
        _check_n_m(top, n_m, method_class, schedule)
    method_args = resolve_options(top["method_args"], method_class.options, "method_args.")
    return Recipe(
        method=top["method"], sparsity=top["sparsity"], distribution=top["distribution"],
        erk_power_scale=top["erk_power_scale"], layer_sparsity=top["layer_sparsity"], params=params,
        schedule=schedule, method_args=method_args, seed=top["seed"],
        mask_weights_after_step=top["mask_weights_after_step"], source=source, execution=top["execution"],
        structure=top["structure"], block_size=top["block_size"] or DEFAULT_BLOCK_SIZE, n_m=n_m,
    )


def _check_n_m(top: Mapping[str, Any], n_m: tuple[int, int], method_class, schedule: UpdateSchedule) -> None:
    """``structure: n_m``: every layer is at density N/M, kept by per-group swaps."""
    n, m = n_m
    if issubclass(method_class, DropGrowMethod) and round_half_up(schedule.drop_fraction * n) == 0:
        warnings.warn(f"recipe key 'schedule.drop_fraction': with n_m {n}:{m} every group swaps "
                      f"round({schedule.drop_fraction} x {n}) = 0 weights per update, so the masks never change; "
                      f"give a drop_fraction of at least {0.5 / n:g}", RecipeWarning, stacklevel=3)
    if not method_class.supports_fan_in:
        raise RecipeError("structure", f"'n_m' needs a method whose mask changes are per-layer swaps or selections "
                                       f"(rigl, dst_ee, set, static and other drop/grow methods); "
                                       f"'{top['method']}' is not one")
    if abs(top["sparsity"] - (1 - n / m)) > 1e-9:
        raise RecipeError("sparsity", f"must be 1 - N/M = {1 - n / m:g} (within 1e-9) with structure n_m {n}:{m}, "
                                      f"got {top['sparsity']}")
    if top["layer_sparsity"]:
        raise RecipeError("layer_sparsity", f"is given, but with structure n_m every sparse layer is {n}:{m}; keep a "
                                            "layer dense with params.exclude instead")



class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    where = "<inline YAML>"

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: yaml's own error follows
                continue
            if seen is not None:
                lines = f"line {line}" if seen == line else f"lines {seen} and {line}"
                raise RecipeError(_key_path(self._path_of(node), key),
                                  f"is given twice in one mapping ({self.where}, {lines}); keep one")
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)

    def _path_of(self, target) -> str:
        """The dotted key path of mapping node ``target`` from the document root."""
        stack, visited = [(self._root, "")], set()
        while stack:
            node, path = stack.pop()
            if node is target:
                return path
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.MappingNode):
                stack.extend((value, _key_path(path, key.value)) for key, value in node.value)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))
        return ""

    def construct_document(self, node):
        self._root = node
        return super().construct_document(node)


def _key_path(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _load_yaml(text: str, where: str):
    """The YAML document in ``text``; :class:`RecipeError` naming ``where`` (the file) for invalid
    YAML or a key given twice."""
    loader = _RecipeLoader(text)
    loader.where = where
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise RecipeError("<file>", f"{where}: not valid YAML: {error}") from None
    except RecursionError:
        raise RecipeError("<file>", f"{where}: nested too deeply to be a recipe") from None
    finally:
        loader.dispose()


def _is_file(candidate: str | Path) -> bool:
    if isinstance(candidate, str) and "\n" in candidate:
        return False
    try:
        return Path(candidate).is_file()
    except OSError:  # e.g. a name too long to be a path
        return False


def _run_relative_values(recipe: Recipe):
    """``(key, section, name, list index or None, value)`` for every run-relative value."""
    schedule = resolve_options(recipe.source.get("schedule"), _SCHEDULE_OPTIONS, "schedule.")
    for section, values in (("schedule", schedule), ("method_args", recipe.method_args)):
        for name, value in values.items():
            items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
            for index, item in items:
                if isinstance(item, RUN_RELATIVE):
                    yield f"{section}.{name}", section, name, index, item


def _resolve(key: str, value, total_steps: int, steps_per_epoch: int | None, run_epochs: int | None) -> int:
    if isinstance(value, FromRun) or value.unit == "epochs":
        if steps_per_epoch is None:
            raise RecipeError(key, f"is '{value}', relative to the run's epochs: fitting it needs the run's "
                                   "steps_per_epoch= too")
        if isinstance(value, FromRun):
            return steps_per_epoch if value.what == "steps_per_epoch" else run_epochs
        return value.of(run_epochs)
    return value.of(total_steps)


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _comparable(first, last) -> bool:
    """Both integers, or both fractions of the run (an integer and a fraction wait for fit_to_run)."""
    return type(first) is type(last)


def _build_schedule(args: dict[str, Any]) -> UpdateSchedule:
    first = args["first_update_step"] or args["update_interval"]
    last = args["last_update_step"]
    if last is not None and _comparable(first, last) and _value(last) < _value(first):
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


def _value(step):
    return step if isinstance(step, int) else step.fraction
