"""Train a link predictor on a temporal graph, dense or with a gsparse recipe, in one process or under
DeepSpeed (`deepspeed --num_accelerators 2 scripts/train_linkpred.py --deepspeed_config ...`).

The result is printed beside no-learning baselines scored on the same slices; see
docs/results/README.md for the protocol."""
from __future__ import annotations

import argparse
import sys

from gsparse.tasks.linkpred.train import CHOICES, LinkPredConfig, train_link_prediction
from gsparse.training.cli import RUN_HELP, add_config_arguments, config_values

HELP = {
    **RUN_HELP,
    "dataset": "dataset card name (collegemsg, ia-email, wiki-talk) or an edge-list file",
    "data_dir": "folder holding the dataset cards' files (default: $GSPARSE_DATA, else graphs/data)",
    "format": "edge-list format; auto reads the file's first lines (never its name)",
    "columns": "csv files whose header does not use the usual names: 'src=NAME,dst=NAME,time=NAME[,weight=NAME]'",
    "remap": "map node ids to 0..n-1 (default: ids as in the file, nodes = max id + 1)",
    "protocol": "chronological: train/val/test disjoint in time, each slice scored from the edges before it; "
                "paper: the DST-EE paper's split (test = last 20%, train/val drawn from the rest); random",
    "negatives": "random: uniform pairs that are not known edges; historical: half are earlier edges absent "
                 "from the slice (Poursafaei et al. 2022)",
    "eval_links": "all: every distinct pair of a slice; new: only pairs never seen before the slice",
    "val_fraction": "fraction of the edges (the latest before test) in the validation slice",
    "test_fraction": "fraction of the edges (the latest) in the test slice",
    "train_windows": "chronological: the training slice is cut into this many windows in time; window 0 is only "
                     "history, each later one is trained on from the edges before it",
    "ranking_negatives": "negative destinations per positive for MRR (0: no MRR)",
    "features": "gnn: a PyG encoder over the known graph; walks: the paper's temporal walks + skip-gram",
    "encoder": "PyG convolution of the two encoder layers",
    "pair_features": "append the pair's structural features (past occurrences, common neighbours, Adamic-Adar, "
                     "preferential attachment, from the edges before its slice) to the predictor's input",
    "embedding_dim": "learned node embedding width (the encoder's input)",
    "hidden": "encoder width (both layers)",
    "predictor_hidden": "width of the predictor's first fully connected layer (fc1)",
    "dropout": "dropout between the encoder layers",
    "walks_per_node": "features=walks: temporal walks started per node",
    "walk_length": "features=walks: edges per walk",
    "epochs": "training epochs (passes over every training window)",
    "batch_size": "global batch size in pairs (split over ranks and micro-batches)",
    "optimizer": "adamw, or sgd with Nesterov momentum 0.9",
    "lr": "peak learning rate (cosine decay to 0 over the run)",
    "weight_decay": "weight decay of the optimizer",
    "seed": "seed of the split, the negatives, the initial weights and the batch order",
    "baselines": "score the no-learning baselines (EdgeBank, common neighbours, Adamic-Adar, preferential "
                 "attachment) on the same slices and say whether the model beats them",
    "threads": "intra-op threads per rank (default: usable cores / ranks on this node)",
    "accumulation_steps": "micro-batches per optimizer step (default 1; under DeepSpeed the config's "
                          "gradient_accumulation_steps)",
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="train_linkpred", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, LinkPredConfig, HELP, skip=("extra",), choices=CHOICES)
    return parser


def config_from_args(args: argparse.Namespace) -> LinkPredConfig:
    return LinkPredConfig(**config_values(args, LinkPredConfig, skip=("extra",)))


def main(argv: list[str] | None = None) -> int:
    from gsparse.deepspeed.compat import UnsupportedLayout
    from gsparse.deepspeed.config import DeepSpeedConfigError
    from gsparse.tasks.graphs import DatasetError, GraphFormatError
    from gsparse.tasks.linkpred.split import NegativeSamplingError
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
    except (RecipeError, DeepSpeedConfigError, UnsupportedLayout, DatasetError, GraphFormatError,
            NegativeSamplingError, FileNotFoundError, ValueError) as error:
        print(f"train_linkpred: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
