"""A wheel built from this tree, installed into a fresh virtual environment, finds the dataset
cards and the bundled graph inside the installed package (not through the repository)."""
import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import json, gsparse, gsparse.training
from gsparse.tasks.graphs import dataset_card, list_datasets, load_dataset
from gsparse.tasks.graphs.datasets import CARDS_DIR, DEFAULT_DATA_DIR
card = dataset_card("collegemsg")
edges = load_dataset("collegemsg")
print(json.dumps({"package": gsparse.__file__, "cards": str(CARDS_DIR), "card": str(card.card_path),
                  "source": str(edges.source), "datasets": list_datasets(), "edges": len(edges),
                  "first": [int(edges.src[0]), int(edges.dst[0]), int(edges.time[0])],
                  "data_dir": str(DEFAULT_DATA_DIR)}))
"""


def test_wheel_in_a_fresh_venv_finds_cards_and_bundled_graph(tmp_path):
    source = tmp_path / "source"  # build from a copy: no build/ or egg-info left in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "gsparse", source / "gsparse", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, text=True, timeout=120)
    [wheel] = wheels.glob("gsparse-*.whl")

    environment = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(environment)
    python = environment / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=120)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([str(python), "-c", CHECK], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    installed = Path(found["package"]).resolve().parent
    assert environment.resolve() in installed.parents  # the wheel's copy, not the checkout
    assert Path(found["cards"]) == installed / "tasks" / "graphs" / "cards"
    assert Path(found["card"]).parent == installed / "tasks" / "graphs" / "cards"
    assert Path(found["source"]) == installed / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"
    assert found["datasets"] == ["bitcoin-otc", "collegemsg", "ia-email", "wiki-talk"]
    assert found["edges"] == 59835 and found["first"] == [1, 2, 1082040961]
    assert ROOT.resolve() not in Path(found["data_dir"]).resolve().parents  # no path into the repository
