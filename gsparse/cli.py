"""The ``gsparse`` command."""
from __future__ import annotations

import argparse
import json
import sys

from gsparse.options import RecipeError


def block_size_argument(text: str) -> tuple[int, int]:
    """``--block``: ``b`` (``b x b`` blocks), ``RxC``, ``R,C`` or ``[R, C]``; positive integers."""
    parts = text.strip().strip("[]").replace("x", ",").replace("X", ",").split(",")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected b, RxC or [R, C] with positive integers (e.g. 4 or 4x4), "
                                         f"got {text!r}")
    return (sizes[0], sizes[-1])


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

    export = commands.add_parser("export", help="write a trained sparse model with CSR (or BSR) linear layers "
                                 "(a torch.save'd whole module; it is unpickled: trust it)")
    export.add_argument("model_file", help="the model, saved with torch.save(model, path)")
    export.add_argument("out", help="where to torch.save the exported module")
    export.add_argument("--min_sparsity", type=float, default=0.5, help="export linear layers at least this sparse")
    export.add_argument("--min_features", type=int, default=256,
                        help="and with in and out features at least this (smaller ones run slower sparse)")
    export.add_argument("--compact", action="store_true",
                        help="also write the weights as CSR pieces beside OUT (.safetensors, or .compact.pt)")
    export.add_argument("--torchscript", action="store_true",
                        help="also write the exported module scripted, beside OUT (.torchscript.pt; torch.jit.load); "
                        "BSR layers are CSR there (TorchScript cannot save BSR tensors)")
    export.add_argument("--block", type=block_size_argument, default=None, metavar="B|RxC",
                        help="the block size of a block mask (the recipe's block_size): layers its square blocks "
                        "tile become BSR layers, the others CSR")

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

            report = export_file(args.model_file, args.out, min_sparsity=args.min_sparsity,
                                 min_features=args.min_features, compact=args.compact, torchscript=args.torchscript,
                                 block=args.block)
            print(json.dumps(report, indent=2))
            if report.get("torchscript_csr_layers"):
                print(f"gsparse: note: TorchScript cannot save BSR tensors; {report['files']['torchscript']} runs "
                      f"{', '.join(report['torchscript_csr_layers'])} as CSR", file=sys.stderr)
    except (RecipeError, FileNotFoundError, ValueError) as error:
        print(f"gsparse: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
