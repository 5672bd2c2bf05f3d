"""What the task command lines share: one flag per field of a task's config dataclass, and
``--sparsity`` overriding the recipe's."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping


def add_config_arguments(parser: argparse.ArgumentParser, config_class, help_texts: Mapping[str, str],
                         skip: tuple[str, ...] = ()) -> None:
    """``--<field>`` for every field of ``config_class`` (booleans as ``--x/--no-x``), plus
    ``--sparsity`` and the ``deepspeed`` launcher's ``--local_rank``."""
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        flag, default = f"--{field.name}", field.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = next((k for k in (int, float) if str(field.type).startswith(k.__name__)), str)
            parser.add_argument(flag, type=kind, default=default, help=help_texts.get(field.name))
    parser.add_argument("--sparsity", type=float, help="override the recipe's sparsity")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def config_values(args: argparse.Namespace, config_class, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config's fields from parsed ``args``, the recipe given ``--sparsity`` if any."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if f.name not in skip}
    if args.sparsity is not None:
        if values.get("recipe") is None:
            raise ValueError("--sparsity needs --recipe")
        from gsparse.recipe import load_recipe

        values["recipe"] = {**load_recipe(values["recipe"]).source, "sparsity": args.sparsity}
    return values
