"""What the task command lines share: one flag per field of a task's config dataclass, and
``--sparsity`` overriding the recipe's."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping


def add_config_arguments(parser: argparse.ArgumentParser, config_class, help_texts: Mapping[str, str],
                         skip: tuple[str, ...] = (), choices: Mapping[str, tuple] | None = None) -> None:
    """``--<field>`` for every field of ``config_class`` (booleans as ``--x/--no-x``), plus
    ``--sparsity`` and the ``deepspeed`` launcher's ``--local_rank``.

    Every field needs a help text in ``help_texts`` (a missing one is a programming error, raised
    here); the help shows it with the default and, where ``choices`` names them, the allowed values."""
    choices = choices or {}
    missing = [f.name for f in dataclasses.fields(config_class) if f.name not in skip and f.name not in help_texts]
    if missing:
        raise ValueError(f"{config_class.__name__}: no help text for {', '.join(missing)}")
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        flag, default = f"--{field.name}", field.default
        allowed = choices.get(field.name)
        text = help_texts[field.name].replace("%", "%%")
        if allowed:
            text += f" (one of: {', '.join(map(str, allowed))})"
        if "default" not in text:
            text += f" (default: {'none' if default is None else default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            kind = next((k for k in (int, float) if str(field.type).startswith(k.__name__)), str)
            parser.add_argument(flag, type=kind, default=default, help=text, metavar=field.name.upper())
    parser.add_argument("--sparsity", type=float, help="override the recipe's sparsity, a fraction in [0, 1)")
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
