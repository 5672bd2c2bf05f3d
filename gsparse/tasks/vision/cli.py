"""Command-line front end of :func:`gsparse.tasks.vision.train_image_classifier`."""
from __future__ import annotations

import argparse
import sys

from gsparse.tasks.vision.train import VisionConfig, train_image_classifier
from gsparse.training.cli import add_config_arguments, config_values

_HELP = {
    "dataset": "digits (bundled), cifar10, cifar100 or imagenet",
    "data_dir": "CIFAR: the folder with cifar-10-batches-py / cifar-100-python; ImageNet: train/ and val/",
    "recipe": "gsparse recipe YAML; omit for dense training (or put it under 'gsparse' in the DeepSpeed config)",
    "deepspeed_config": "DeepSpeed JSON config: run under `deepspeed` or `torchrun`",
    "batch_size": "global batch size (split over ranks and micro-batches)",
    "accumulation_steps": "micro-batches per optimizer step (default 1; under DeepSpeed the config's)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_cnn", description=__doc__)
    add_config_arguments(parser, VisionConfig, _HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gsparse.options import RecipeError
    from gsparse.training import TrainingDiverged, shutdown_distributed

    args = build_parser().parse_args(argv)
    try:
        train_image_classifier(VisionConfig(**config_values(args, VisionConfig)))
        shutdown_distributed()
    except TrainingDiverged as error:
        print(f"train_cnn: error: training diverged: {error}", file=sys.stderr)
        return 3
    except (RecipeError, FileNotFoundError, ValueError) as error:
        print(f"train_cnn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
