"""What the task command lines share: one flag per field of a task's config dataclass, and
``--sparsity`` overriding the recipe's."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping


RUN_HELP = {  # the help of the run options every task's config has (RunConfig's fields)
    "recipe": "gsparse recipe YAML; omit for dense training (or put it under 'gsparse' in the DeepSpeed config)",
    "deepspeed_config": "DeepSpeed JSON config: run under `deepspeed` or `torchrun`",
    "run_dir": "folder for log.csv, updates.jsonl, metrics.json and checkpoints",
    "progress": "a progress bar per epoch",
    "resume": "continue from the run folder's last checkpoint",
    "export": "at the end, write the final model as plain PyTorch with its large sparse linear layers in CSR "
              "(run_dir/export/model.pt), the weights as a compact file (indices + values) and export.json",
    "collective_timeout": "seconds a training step may wait for the other ranks before this rank stops (exit "
                          "code 124) and the launcher ends the run: a hung rank never stalls the others for long "
                          "(default $GSPARSE_COLLECTIVE_TIMEOUT, else 600)",
    "resume_anyway": "with --resume: resume although the checkpoint was trained on other data (its task/dataset "
                     "fingerprint differs); a different method, sparsity, recipe or sparse layers is never resumed",
    "deterministic": "deterministic torch kernels: bitwise-repeatable runs and resumes",
    "max_nonfinite_steps": "optimizer steps in a row with a non-finite loss before the run stops as diverged",
}


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
