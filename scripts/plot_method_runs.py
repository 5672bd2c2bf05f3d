"""Plot the per-layer density over training of method runs (their updates.jsonl), one panel each:

    python scripts/plot_method_runs.py docs/results/methods acdc optg autosparse mest snip

writes <folder>/density_by_layer.png and prints a markdown table of the runs' metrics.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(folder: str, methods: list[str]) -> None:
    root = Path(folder)
    figure, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.2), squeeze=False)
    print("| method | test accuracy (best val epoch) | test AUC | final density | per-layer density | updates |")
    print("|---|---|---|---|---|---|")
    for axis, method in zip(axes[0], methods):
        rows = [json.loads(line) for line in (root / method / "updates.jsonl").read_text().splitlines()]
        metrics = json.loads((root / method / "metrics.json").read_text())
        last = json.loads((root / method / "log.jsonl").read_text().splitlines()[-1])
        layers = sorted(rows[-1]["layer_density"]) if rows else []
        for layer in layers:
            axis.step([r["step"] for r in rows], [r["layer_density"][layer] for r in rows], where="post",
                      marker="o" if len(rows) < 3 else None, label=layer.replace(".weight", ""))
        axis.step([r["step"] for r in rows], [r["density"] for r in rows], where="post", color="black",
                  linestyle="--", label="all")
        axis.set_title(method)
        axis.set_xlabel("optimizer step (mask updates)")
        axis.set_ylim(0, 1.05)
        axis.legend(fontsize=7)
        per_layer = ", ".join(f"{k.split('/')[-1].replace('.weight', '')} {v:.3f}" for k, v in last.items()
                              if k.startswith("density/"))
        print(f"| `{method}` | {metrics['test_accuracy']:.4f} (epoch {metrics['best_epoch']}) | "
              f"{metrics['test_auc']:.4f} | {metrics['density']:.3f} | {per_layer} | {metrics['num_updates']} |")
    axes[0][0].set_ylabel("density")
    figure.tight_layout()
    figure.savefig(root / "density_by_layer.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
