"""The layers stay layers: the core imports with torch, numpy and pyyaml only, and no gsparse
module imports one that imports it back."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gsparse"
CORE = ["gsparse", "gsparse.engine", "gsparse.methods", "gsparse.selection", "gsparse.backends",
        "gsparse.distributions", "gsparse.schedules", "gsparse.recipe", "gsparse.checkpoint", "gsparse.forward",
        "gsparse.sparsifier", "gsparse.params", "gsparse.hashrng", "gsparse.options", "gsparse.kernels",
        "gsparse.export"]
OPTIONAL = ["deepspeed", "torch_geometric", "matplotlib", "networkx", "tqdm", "scipy", "sklearn", "pandas",
            "torchvision", "safetensors", "transformers", "accelerate"]


def test_core_imports_without_optional_packages():
    code = (
        "import sys\n"
        f"for name in {OPTIONAL!r}:\n"
        "    sys.modules[name] = None  # any import of it fails\n"
        f"for module in {CORE!r}:\n"
        "    __import__(module)\n"
        "import gsparse, torch\n"
        "model = torch.nn.Sequential(torch.nn.Linear(8, 8))\n"
        "gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), {'method': 'rigl', 'sparsity': 0.5})\n"
        "loaded = sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in set(%r))\n"
        "assert not [m for m in loaded if sys.modules.get(m) is not None], loaded\n" % (OPTIONAL,)
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, name: str, modules) -> set[str]:
    """Modules imported at module level (TYPE_CHECKING blocks included; imports inside functions,
    made when called, are the way to depend lazily on a layer above)."""
    tree = ast.parse(path.read_text())
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                for alias in node.names:  # ``from package import module`` depends on the module
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(tree.body)
    return found


def test_no_import_cycles():
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: {imported for imported in _top_level_imports(path, name, modules) if imported in modules and imported != name}
             for name, path in modules.items()}
    # importing a submodule runs its package's __init__ first, but that is not an edge back
    state: dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target]
                if not all(target.startswith(step + ".") or step.startswith(target + ".") for step in cycle[:-1]):
                    cycles.append(cycle)
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles
