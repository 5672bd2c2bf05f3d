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

    demo = commands.add_parser("demo", help="sparse-train a small link predictor on the bundled CollegeMsg graph")
    demo.add_argument("--recipe", help="recipe YAML (default: DST-EE, uniform, sized to the run)")
    demo.add_argument("--sparsity", type=float, default=0.9)
    demo.add_argument("--epochs", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--deepspeed_config", help="DeepSpeed JSON config; run under `deepspeed` or `torchrun`")
    demo.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher

    args = parser.parse_args(argv)
    try:
        if args.command == "check-recipe":
            from gsparse.recipe import load_recipe

            recipe = load_recipe(args.recipe)
            resolved = {key: value for key, value in vars(recipe).items() if key != "source"}
            print(json.dumps(resolved, default=lambda o: getattr(o, "__dict__", str(o)), indent=2))
        elif args.command == "demo":
            from gsparse.demo import run_demo

            run_demo(recipe=args.recipe, epochs=args.epochs, sparsity=args.sparsity, seed=args.seed,
                     deepspeed_config=args.deepspeed_config)
    except (RecipeError, FileNotFoundError) as error:
        print(f"gsparse: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
