"""Per-layer density distributions for a global sparsity target.

* ``uniform``: every layer gets the same density ``1 - sparsity``.
* ``er`` (Erdos-Renyi): density proportional to ``(n_in + n_out) / (n_in * n_out)``
  (kernel dimensions of a conv weight are ignored).
* ``erk`` (Erdos-Renyi-Kernel): density proportional to
  ``(sum(shape) / prod(shape)) ** erk_power_scale`` (kernel dimensions included).

ER/ERK follow RigL's reference ``get_sparsities_erdos_renyi``
(google-research/rigl, ``rigl/sparse_utils.py``; Evci et al., 2020): a common scale
``eps`` is solved so that the total number of active weights matches the target;
any layer whose density ``eps * raw`` would exceed 1 is made dense and ``eps`` is
re-solved. Layers with a user-fixed (custom) sparsity are left out of that solve. The scores are
handled as logarithms relative to the largest, so any ``erk_power_scale`` (1e-300 or 1e300) gives
a result: a large power sends the whole budget to the layers of the largest score.

A layer left with 0 active weights draws a :class:`~gsparse.options.RecipeWarning`; a result with
no active weight in any layer raises :class:`~gsparse.options.RecipeError`.

Weight shapes use PyTorch layouts: Linear ``[out, in]``, Conv ``[out, in, kh, kw]``.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Mapping, Sequence

from gsparse.options import RecipeError, RecipeWarning

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("uniform", "er", "erk")


def _log_score(shape: Sequence[int], distribution: str) -> float:
    """``log`` of one layer's ER/ERK score; its un-normalised density (RigL's ``raw_probabilities``)
    is ``score ** erk_power_scale`` for ERK, ``score`` for ER."""
    if distribution == "er" and len(shape) >= 2:
        n_out, n_in = shape[0], shape[1]
        return math.log((n_in + n_out) / (n_in * n_out))
    # ERK, and ER on 1-D shapes.
    return math.log(sum(shape) / math.prod(shape))


def layer_densities(shapes: Mapping[str, Sequence[int]], sparsity: float, distribution: str = "uniform",
                    custom: Mapping[str, float] | None = None,
                    erk_power_scale: float = 1.0) -> dict[str, float]:
    """Return ``{name: density}`` (density = 1 - layer sparsity) in the key order of ``shapes``.

    ``sparsity`` in [0, 1) is the target for all non-custom layers; ``custom`` maps layer
    names to fixed sparsities in [0, 1] (those layers are excluded from the ER/ERK solve).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; allowed values: {', '.join(DISTRIBUTIONS)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    custom = dict(custom or {})
    for name, value in custom.items():
        if name not in shapes:
            raise ValueError(f"custom sparsity given for unknown layer {name!r}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"custom sparsity of {name!r} must be in [0, 1], got {value}")
    for name, shape in shapes.items():
        if len(shape) == 0 or any(dim <= 0 for dim in shape):
            raise ValueError(f"layer {name!r} has invalid shape {tuple(shape)}; all dims must be positive")

    solved = [name for name in shapes if name not in custom]
    if distribution == "uniform":
        eps, raw, dense = 1.0 - sparsity, {name: 1.0 for name in solved}, set()
    else:
        power = erk_power_scale if distribution == "erk" else 1.0
        log_scores = {name: _log_score(shapes[name], distribution) for name in solved}
        eps, raw, dense = _solve_erdos_renyi(shapes, sparsity, log_scores, power)
    densities = {}
    for name in shapes:
        if name in custom:
            densities[name] = 1.0 - custom[name]
        elif name in dense:
            densities[name] = 1.0
        else:
            densities[name] = eps * raw[name]
    _check_active(shapes, densities, solved, sparsity, distribution, erk_power_scale)
    return densities


def _solve_erdos_renyi(shapes: Mapping[str, Sequence[int]], sparsity: float, log_scores: Mapping[str, float],
                       power: float) -> tuple[float, dict[str, float], set[str]]:
    """RigL's loop: return the scale ``eps``, the raw densities of the layers not forced dense (the
    largest 1: ``eps * raw`` does not depend on their common scale) and the layers forced dense."""
    dense: set[str] = set()
    eps, raw = 1.0, {}
    while True:
        remaining = [name for name in log_scores if name not in dense]
        if not remaining:  # everything dense (only reachable at sparsity ~0 via rounding)
            break
        top = max(log_scores[name] for name in remaining)
        # score ** power relative to the largest, as exp of a difference of logs: never overflows,
        # and a layer far below the largest underflows to 0 (no weights) instead of the sum doing so
        raw = {name: math.exp(power * (log_scores[name] - top)) for name in remaining}
        rhs = divisor = 0.0
        for name in log_scores:
            numel = math.prod(shapes[name])
            n_zeros = math.floor(sparsity * numel)
            if name in dense:
                rhs -= n_zeros
            else:
                rhs += numel - n_zeros
                divisor += raw[name] * numel
        eps = rhs / divisor  # divisor >= the numel of a largest-score layer (raw 1)
        if eps <= 1.0:  # eps x the largest raw density (1)
            break
        newly_dense = [name for name in remaining if log_scores[name] == top]
        logger.info("ER/ERK: layers forced dense: %s", ", ".join(newly_dense))
        dense.update(newly_dense)
    return eps, raw, dense


def _check_active(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float], solved: list[str],
                  sparsity: float, distribution: str, erk_power_scale: float) -> None:
    """Warn about distributed layers left without an active weight; refuse a model left without any."""
    counts = active_counts(shapes, densities)
    empty = [name for name in solved if counts[name] == 0]
    if not empty:
        return
    setting = f"sparsity {sparsity}, distribution {distribution}" + (
        f", erk_power_scale {erk_power_scale}" if distribution == "erk" else "")
    if not any(counts.values()):
        raise RecipeError("sparsity", f"{setting} leaves no active weight in any of the {len(shapes)} sparse "
                                      f"layer(s) ({sum(math.prod(s) for s in shapes.values()):,} weights): lower it"
                                      + (" or use erk_power_scale 1" if distribution == "erk" and
                                         erk_power_scale != 1.0 else ""))
    warnings.warn(f"gsparse: {setting} leaves {len(empty)} layer(s) with 0 active weights (always zero): "
                  f"{', '.join(empty)}", RecipeWarning, stacklevel=3)


def round_half_up(value: float) -> int:
    """The rounding used for every count in gsparse (Python's ``round`` rounds half to even)."""
    return int(math.floor(value + 0.5))


def active_counts(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]) -> dict[str, int]:
    """Exact number of active weights per layer: ``floor(density * numel + 0.5)``, clamped to [0, numel].

    Round-half-up is the rounding rule used everywhere in gsparse to turn a density into a count.
    """
    counts = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        counts[name] = min(max(round_half_up(densities[name] * numel), 0), numel)
    return counts
