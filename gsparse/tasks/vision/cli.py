"""Command-line front end of :func:`gsparse.tasks.vision.train_image_classifier`."""
from __future__ import annotations

import argparse
import sys

from gsparse.tasks.vision.train import CHOICES, VisionConfig, train_image_classifier
from gsparse.training.cli import RUN_HELP, add_config_arguments, config_values

_HELP = {
    **RUN_HELP,
    "dataset": "digits is bundled; CIFAR and ImageNet come from data_dir",
    "data_dir": "CIFAR: the folder with cifar-10-batches-py / cifar-100-python; ImageNet: train/ and val/",
    "batch_size": "global batch size (split over ranks and micro-batches)",
    "accumulation_steps": "micro-batches per optimizer step (default 1; under DeepSpeed the config's)",
    "model": "network: small_resnet (digits), cifar_resnet50, cifar_vgg19 (32x32 inputs) or resnet50 (ImageNet)",
    "epochs": "training epochs",
    "lr": "peak learning rate of SGD (cosine decay to 0 over the run)",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "SGD weight decay",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "sync_batchnorm": "synchronise BatchNorm statistics across ranks (needs CUDA; default: per rank)",
    "workers": "DataLoader worker processes decoding ImageNet",
    "seed": "seed of the initial weights, the augmentation and the batch order",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_cnn", description=__doc__)
    add_config_arguments(parser, VisionConfig, _HELP, choices=CHOICES)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gsparse.deepspeed.compat import UnsupportedLayout
    from gsparse.deepspeed.config import DeepSpeedConfigError
    from gsparse.options import RecipeError
    from gsparse.tasks.vision.data import DatasetLayoutError
    from gsparse.training import TrainingDiverged, shutdown_distributed

    args = build_parser().parse_args(argv)
    try:
        train_image_classifier(VisionConfig(**config_values(args, VisionConfig)))
        shutdown_distributed()
    except TrainingDiverged as error:
        print(f"train_cnn: error: training diverged: {error}", file=sys.stderr)
        return 3
    except (RecipeError, DeepSpeedConfigError, UnsupportedLayout, DatasetLayoutError, FileNotFoundError,
            ValueError) as error:
        print(f"train_cnn: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
