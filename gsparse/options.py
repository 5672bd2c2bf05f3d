"""Declarative option checking shared by recipes and method hyperparameters.

An option spec is ``{key: Option(default, check)}``; :func:`resolve_options` fills defaults and
raises one :class:`RecipeError` naming the key and what is allowed for the first bad value.

Step counts may also be given relative to the run: ``"N%"`` of its optimizer steps
(:class:`RunFraction`, from :func:`steps`) or ``auto`` for the run's steps per epoch or epochs
(:class:`FromRun`); :meth:`gsparse.recipe.Recipe.fit_to_run` turns them into integers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping

_REQUIRED = object()


class RecipeError(ValueError):
    """A recipe key or value is not allowed; the message names the key and the allowed values."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"recipe key '{key}': {problem}")


class RecipeWarning(UserWarning):
    """A recipe that runs but probably not as meant for this run (e.g. very few mask updates)."""


@dataclass(frozen=True)
class RunProblem:
    """What a method's run check found: an ``error`` (the run is refused with a
    :class:`RecipeError`) or a warning (a :class:`RecipeWarning`), about recipe key ``key``."""

    key: str
    message: str
    error: bool = True


@dataclass(frozen=True, slots=True)  # slots: no __dict__, so JSON dumps fall back to str(): "2%"
class RunFraction:
    """``"N%"`` in a recipe: N percent of the run's optimizer steps (``unit="steps"``) or of its
    epochs (``unit="epochs"``), at least ``minimum``; resolved by :meth:`of`."""

    percent: str  # the number as written, e.g. "2.5"
    unit: str = "steps"
    minimum: int = 0

    @property
    def fraction(self) -> Fraction:
        return Fraction(self.percent) / 100

    def of(self, total: int) -> int:
        """``round_half_up(N/100 * total)``, exactly (no float error), and at least ``minimum``."""
        return max(self.minimum, math.floor(self.fraction * total + Fraction(1, 2)))

    def __str__(self) -> str:
        return f"{self.percent}%"


@dataclass(frozen=True, slots=True)
class FromRun:
    """``auto`` in a recipe: the run's ``steps_per_epoch`` or ``epochs`` (``what``)."""

    what: str

    def __str__(self) -> str:
        return "auto"


RUN_RELATIVE = (RunFraction, FromRun)

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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        if minimum is not None and (value < minimum or (min_open and value == minimum)):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        if maximum is not None and (value > maximum or (max_open and value == maximum)):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        return float(value)

    return check


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range (YAML reads 400 digits as an int)
        return False


def integer(minimum: int | None = None) -> Check:
    """An integer, at least ``minimum``."""
    allowed = "an integer" + ("" if minimum is None else f" >= {minimum}")

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        return value

    return check


def steps(minimum: int = 0, unit: str = "steps") -> Check:
    """An integer >= ``minimum``, or ``"N%"`` (0 <= N <= 100) of the run's optimizer steps (or
    epochs, ``unit="epochs"``): a :class:`RunFraction`, at least ``minimum`` once resolved."""
    as_int = integer(minimum)

    def check(key: str, value: Any) -> int | RunFraction:
        if not isinstance(value, str):
            return as_int(key, value)
        text = value.strip()
        allowed = f"an integer >= {minimum} or \"N%\" of the run's {unit} with 0 <= N <= 100"
        try:
            percent = Fraction(text[:-1].strip()) if text.endswith("%") else None
        except (ValueError, ZeroDivisionError):
            percent = None
        if percent is None or not 0 <= percent <= 100:
            raise RecipeError(key, f"expected {allowed}, got {value!r}")
        return RunFraction(text[:-1].strip(), unit, minimum)

    return check


def or_from_run(inner: Check, what: str) -> Check:
    """``auto`` (the run's ``what``: steps_per_epoch or epochs, a :class:`FromRun`) or what ``inner`` accepts."""

    def check(key: str, value: Any) -> Any:
        return FromRun(what) if value == "auto" else inner(key, value)

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
