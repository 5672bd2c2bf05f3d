"""The gsparse command, the README's example and the main job."""
import re
from pathlib import Path

import pytest
import torch

from gsparse.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_linkpred_subcommand_reports_bad_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "edges.txt"
    bad.write_text("1 2 10\n2 3 x\n")
    assert main(["linkpred", "--dataset", str(bad), "--run_dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "edges.txt" in err and "line 2" in err


def test_check_recipe_prints_defaults(capsys):
    assert main(["check-recipe", str(ROOT / "recipes" / "set.yaml")]) == 0
    out = capsys.readouterr().out
    assert '"method": "set"' in out and '"update_interval": 100' in out and '"dense_last_layer": false' in out


def test_check_recipe_rejects_bad_key_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: rigl\nsparsity: 0.9\nschedule: {update_intervall: 3}\n")
    assert main(["check-recipe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "schedule.update_intervall" in err and "update_interval" in err


def test_readme_example_runs_and_keeps_exact_sparsity(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(import torch\nimport gsparse.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    sparsifier, model = namespace["sparsifier"], namespace["model"]
    assert sparsifier.step == 1000 and sparsifier.engine.num_updates == 15
    for name, mask in sparsifier.masks.items():
        assert int(mask.sum()) == round(0.1 * mask.numel())
        assert torch.all(dict(model.named_parameters())[name][~mask] == 0)
    assert (tmp_path / "checkpoint.pt").is_file()
