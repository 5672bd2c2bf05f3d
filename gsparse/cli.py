"""The ``gsparse`` command."""
from __future__ import annotations

import argparse
import json
import sys

from gsparse.options import RecipeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gsparse", description="Dynamic sparse training for PyTorch and DeepSpeed.")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-recipe", help="validate a recipe YAML and print it with defaults filled in")
    check.add_argument("recipe")

    commands.add_parser("linkpred", add_help=False,
                        help="train a link predictor (same options as scripts/train_linkpred.py; see --help)")
    commands.add_parser("cnn", add_help=False,
                        help="train an image classifier (same options as scripts/train_cnn.py; see --help)")
    commands.add_parser("compare", add_help=False,
                        help="methods x sparsities x seeds grid with table and plots (as scripts/compare.py)")

    export = commands.add_parser("export", help="write a trained sparse model with CSR linear layers "
                                 "(a torch.save'd whole module; it is unpickled: trust it)")
    export.add_argument("model_file", help="the model, saved with torch.save(model, path)")
    export.add_argument("out", help="where to torch.save the exported module")
    export.add_argument("--min_sparsity", type=float, default=0.5, help="export linear layers at least this sparse")
    export.add_argument("--min_features", type=int, default=256,
                        help="and with in and out features at least this (smaller ones run slower sparse)")
    export.add_argument("--compact", action="store_true",
                        help="also write the weights as CSR pieces beside OUT (.safetensors, or .compact.pt)")
    export.add_argument("--torchscript", action="store_true",
                        help="also write the exported module scripted, beside OUT (.torchscript.pt; torch.jit.load)")

    args, rest = parser.parse_known_args(argv)
    if args.command == "linkpred":
        from gsparse.tasks.linkpred.cli import main as linkpred_main

        return linkpred_main(rest)
    if args.command == "cnn":
        from gsparse.tasks.vision.cli import main as cnn_main

        return cnn_main(rest)
    if args.command == "compare":
        from gsparse.tasks.linkpred.compare import main as compare_main

        return compare_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "check-recipe":
            from gsparse.recipe import load_recipe

            recipe = load_recipe(args.recipe)
            resolved = {key: value for key, value in vars(recipe).items() if key != "source"}
            print(json.dumps(resolved, default=lambda o: getattr(o, "__dict__", str(o)), indent=2))
        elif args.command == "export":
            from gsparse.export import export_file

            print(json.dumps(export_file(args.model_file, args.out, min_sparsity=args.min_sparsity,
                                         min_features=args.min_features, compact=args.compact,
                                         torchscript=args.torchscript), indent=2))
    except (RecipeError, FileNotFoundError, ValueError) as error:
        print(f"gsparse: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
