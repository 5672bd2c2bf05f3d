"""Command-line front end of :func:`gsparse.tasks.linkpred.train_link_prediction`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from gsparse.tasks.linkpred.train import LinkPredConfig, train_link_prediction

_HELP = {
    "dataset": "dataset card name (collegemsg, ia-email, wiki-talk) or an edge-list file",
    "recipe": "gsparse recipe YAML; omit for dense training (or put it under 'gsparse' in the DeepSpeed config)",
    "deepspeed_config": "DeepSpeed JSON config: run under `deepspeed` or `torchrun`",
    "batch_size": "global batch size (split over ranks and micro-batches)",
    "accumulation_steps": "micro-batches per optimizer step (default 1; under DeepSpeed the config's "
                          "gradient_accumulation_steps)",
    "max_nonfinite_steps": "optimizer steps in a row with a non-finite loss before the run stops as diverged",
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="train_linkpred", description=__doc__)
    for field in dataclasses.fields(LinkPredConfig):
        if field.name == "extra":
            continue
        flag = f"--{field.name}"
        default = field.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = next((k for k in (int, float) if str(field.type).startswith(k.__name__)), str)
            parser.add_argument(flag, type=kind, default=default, help=_HELP.get(field.name))
    parser.add_argument("--sparsity", type=float, help="override the recipe's sparsity")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    return parser


def config_from_args(args: argparse.Namespace) -> LinkPredConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(LinkPredConfig) if f.name != "extra"}
    if args.sparsity is not None:
        if values["recipe"] is None:
            raise ValueError("--sparsity needs --recipe")

        from gsparse.recipe import load_recipe

        recipe = dict(load_recipe(values["recipe"]).source)
        recipe["sparsity"] = args.sparsity
        values["recipe"] = recipe
    return LinkPredConfig(**values)


def main(argv: list[str] | None = None) -> int:
    from gsparse.tasks.graphs import DatasetError, GraphFormatError
    from gsparse.options import RecipeError
    from gsparse.training import TrainingDiverged

    from gsparse.training.runner import shutdown_distributed

    args = build_parser().parse_args(argv)
    try:
        train_link_prediction(config_from_args(args))
        shutdown_distributed()
    except TrainingDiverged as error:
        print(f"train_linkpred: error: training diverged: {error}", file=sys.stderr)
        return 3
    except (RecipeError, DatasetError, GraphFormatError, FileNotFoundError, ValueError) as error:
        print(f"train_linkpred: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
