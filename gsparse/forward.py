"""The forward seam: a method's transform of the weight used in forward, and its per-layer
trainable parameters (e.g. AutoSparse's threshold ``T_l``).

:func:`prepare_model` registers the method's ``layer_parameters`` on the module that owns each
sparse weight, as ordinary parameters named ``<weight attribute>_<name>`` (``weight_threshold``),
so that the optimizer trains them, checkpoints hold them and DeepSpeed partitions and gathers them
like any other parameter. Call it before the optimizer is built (``Sparsifier`` and
``gsparse.deepspeed.initialize`` call it for you).

:func:`install_forward_transforms` wraps each owning module's forward: a pre-hook computes
``method.forward_weight(weight, parameters, layer)`` and shadows the module's ``weight`` attribute with
it (the parameter itself is untouched, so state dicts, optimizers and ZeRO see nothing unusual);
a post-hook removes the shadow. Under ZeRO-3 the hooks run after DeepSpeed's own pre-forward hook,
when the full weight is gathered.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from gsparse.methods.base import SparseMethod
from gsparse.params import LAYER_PARAMETER_NAMES, sparse_param_specs
from gsparse.recipe import load_recipe

def _owner(model: torch.nn.Module, param_name: str) -> tuple[torch.nn.Module, str]:
    module_name, _, attr = param_name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def layer_parameter_names(module: torch.nn.Module) -> frozenset[str]:
    """Names of the method parameters gsparse registered on ``module`` (never themselves sparse)."""
    return frozenset(getattr(module, LAYER_PARAMETER_NAMES, ()))


def prepare_model(model: torch.nn.Module, recipe) -> list[torch.nn.Parameter]:
    """Register the recipe's method's per-layer parameters on ``model`` (idempotent).

    Returns the parameters created by this call (empty for methods without any, and when the
    model was prepared already).
    """
    recipe = load_recipe(recipe)
    if not recipe.method_class.layer_parameters:
        return []
    initial_values = recipe.build_method().layer_parameters  # an instance may derive them from its options
    created = []
    for spec in sparse_param_specs(model, recipe):
        module, attr = _owner(model, spec.name)
        weight = module._parameters[attr]
        for key, initial in initial_values.items():
            name = f"{attr}_{key}"
            if name in layer_parameter_names(module) and module._parameters.get(name) is not None:
                continue  # prepared already (also in a copy of a prepared model)
            if hasattr(module, name):
                raise ValueError(f"method '{recipe.method}' needs a parameter '{name}' on the module owning "
                                 f"'{spec.name}', but that name is taken")
            param = torch.nn.Parameter(torch.full((1,), float(initial), dtype=weight.dtype, device=weight.device))
            module.register_parameter(name, param)
            setattr(module, LAYER_PARAMETER_NAMES, layer_parameter_names(module) | {name})
            created.append(param)
    return created


def layer_parameters_of(model: torch.nn.Module, names: Sequence[str],
                        method: SparseMethod | type[SparseMethod]) -> list[dict[str, torch.nn.Parameter]]:
    """Per sparse layer (by parameter name), the method's parameters ``{key: parameter}``."""
    result = []
    for name in names:
        module, attr = _owner(model, name)
        parameters = {}
        for key in method.layer_parameters:
            param = module._parameters.get(f"{attr}_{key}")
            if param is None:
                raise RuntimeError(f"method '{method.name}' needs the parameter '{name}_{key}': call "
                                   "gsparse.prepare_model(model, recipe) before building the optimizer "
                                   "(gsparse.deepspeed.initialize and gsparse.Sparsifier do it for you)")
            parameters[key] = param
        result.append(parameters)
    return result


def add_to_optimizer(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.nn.Parameter],
                     options: Mapping[str, object] | None = None) -> None:
    """Add the per-layer parameters the optimizer does not train yet, in one group with the
    method's ``layer_parameter_group`` options (those the optimizer knows; default: no weight decay)."""
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in parameters if id(p) not in trained]
    if missing:
        options = {"weight_decay": 0.0} if options is None else options
        optimizer.add_param_group({"params": missing, **{key: value for key, value in options.items()
                                                         if key in optimizer.defaults}})


def install_forward_transforms(model: torch.nn.Module, names: Sequence[str], method: SparseMethod,
                               parameters: Sequence[Mapping[str, torch.nn.Parameter]]) -> list:
    """Make each sparse layer's forward use ``method.forward_weight``; returns removable handles."""
    if not method.transforms_forward:
        return []
    handles = []
    infos = {info.name: info for info in method.layers}
    for name, layer_parameters in zip(names, parameters):
        module, attr = _owner(model, name)

        def shadow_weight(module, args, attr=attr, name=name, layer_parameters=layer_parameters, info=infos[name]):
            weight = module._parameters[attr]
            if weight.numel() == 0:  # ZeRO-3 did not gather it: our hook ran before DeepSpeed's
                raise RuntimeError(f"gsparse: the weight '{name}' is not gathered in forward; attach gsparse "
                                   "after deepspeed.initialize (gsparse.deepspeed.initialize does)")
            module.__dict__[attr] = method.forward_weight(weight, layer_parameters, info)

        def remove_shadow(module, args, output, attr=attr):
            module.__dict__.pop(attr, None)

        handles.append(module.register_forward_pre_hook(shadow_weight))
        handles.append(module.register_forward_hook(remove_shadow, always_call=True))
    return handles
