"""Command-line front end of :func:`gsparse.tasks.linkpred.train_link_prediction`."""
from __future__ import annotations

import argparse
import sys

from gsparse.tasks.linkpred.train import LinkPredConfig, train_link_prediction
from gsparse.training.cli import add_config_arguments, config_values

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
    add_config_arguments(parser, LinkPredConfig, _HELP, skip=("extra",))
    return parser


def config_from_args(args: argparse.Namespace) -> LinkPredConfig:
    return LinkPredConfig(**config_values(args, LinkPredConfig, skip=("extra",)))


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
