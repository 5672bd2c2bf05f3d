"""Distributed equality cases of the sparse-training methods, one module per method.

Each module here defines ``CASES``, a list of :class:`MethodCase`; tests/distributed/zero_worker.py
(scenario ``method_cases``) trains each case's recipe on its 3-layer MLP in one process and at
ZeRO stages 0-3 on 2 ranks, and tests/test_zero.py asserts: exact active counts every step,
inactive weights zero (for methods that enforce the mask), masks and counters equal to the single
process, weights within fp tolerance, and a save at ``resume_at`` resuming bitwise.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MethodCase:
    name: str
    recipe: dict = field(default_factory=dict)
    steps: int = 100
    resume_at: int | None = 50


def load_cases(methods: list[str] | None = None) -> dict[str, MethodCase]:
    """``{"<module>/<case>": case}`` for the modules named in ``methods`` (all when None)."""
    cases = {}
    for module in sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])):
        if methods is not None and module not in methods:
            continue
        for case in importlib.import_module(f"tests.method_cases.{module}").CASES:
            cases[f"{module}/{case.name}"] = case
    return cases
