"""Declarative option checking shared by recipes and method hyperparameters.

An option spec is ``{key: Option(default, check)}``; :func:`resolve_options` fills defaults and
raises one :class:`RecipeError` naming the key and what is allowed for the first bad value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_REQUIRED = object()


class RecipeError(ValueError):
    """A recipe key or value is not allowed; the message names the key and the allowed values."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"recipe key '{key}': {problem}")


Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Option:
    default: Any = _REQUIRED
    check: Check = lambda key, value: value
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def resolve_options(values: Mapping[str, Any] | None, spec: Mapping[str, Option], prefix: str) -> dict[str, Any]:
    """Check ``values`` against ``spec`` and return them with defaults filled in."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise RecipeError(prefix.rstrip("."), f"expected a mapping with keys {sorted(spec)}, got {values!r}")
    unknown = [key for key in values if key not in spec]
    if unknown:
        allowed = ", ".join(spec) or "(none)"
        raise RecipeError(f"{prefix}{unknown[0]}", f"unknown key; allowed keys are: {allowed}")
    resolved = {}
    for key, option in spec.items():
        if key in values:
            resolved[key] = option.check(f"{prefix}{key}", values[key])
        elif option.required:
            raise RecipeError(f"{prefix}{key}", "is required")
        else:
            resolved[key] = option.default
    return resolved


def number(minimum: float | None = None, maximum: float | None = None, *, min_open: bool = False,
           max_open: bool = False) -> Check:
    """A real number in the given range (bounds inclusive unless ``*_open``)."""
    low = "(" if min_open or minimum is None else "["
    high = ")" if max_open or maximum is None else "]"
    allowed = f"a number in {low}{'-inf' if minimum is None else minimum}, {'inf' if maximum is None else maximum}{high}"

    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        if minimum is not None and (value < minimum or (min_open and value == minimum)):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        if maximum is not None and (value > maximum or (max_open and value == maximum)):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        return float(value)

    return check


def integer(minimum: int | None = None) -> Check:
    """An integer, at least ``minimum``."""
    allowed = "an integer" + ("" if minimum is None else f" >= {minimum}")

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        return value

    return check


def optional(inner: Check) -> Check:
    """``None`` or what ``inner`` accepts."""

    def check(key: str, value: Any) -> Any:
        return None if value is None else inner(key, value)

    return check


def choice(*allowed: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in allowed:
            raise RecipeError(key, f"{value!r} is not one of: {', '.join(allowed)}")
        return value

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(key, f"expected true or false, got {value!r}")
    return value


def string_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise RecipeError(key, f"expected a list of strings, got {value!r}")
    return tuple(value)


def mapping_of(value_check: Check) -> Check:
    """A mapping from strings (name patterns) to values accepted by ``value_check``."""

    def check(key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise RecipeError(key, f"expected a mapping of name pattern to value, got {value!r}")
        return {str(name): value_check(f"{key}.{name}", item) for name, item in value.items()}

    return check
