"""MEST, Memory-Economic Sparse Training (Yuan et al., NeurIPS 2021), with Elastic Mutation (EM)
and Soft-memory-bound Elastic Mutation (EM&S), Algorithm 1 of the paper.

Rules implemented:

* Sparse from scratch: a random mask with the recipe's per-layer counts (density ``1 - s``).
* Importance score (Eq. 1): ``|w| + lambda * |g * m|`` with ``g`` this step's gradient and ``m``
  the current mask, i.e. only the *sparse* gradient (active weights) counts; inactive weights never
  contribute (``grad_coefficient`` is lambda). Least important active weights are removed.
* Growth is random among inactive weights (:meth:`LayerView.uniform`, equal whatever the sharding).
* Mutation steps: every ``schedule.update_interval`` steps (Delta tau) from
  ``schedule.first_update_step``, while the step is below ``stop_step`` (tau_stop; default
  ``schedule.last_update_step``, none: until training ends). After that the mask is fixed.
* The mutation fraction ``p_t = mutation_fraction * decay_factor ** (milestones <= t)`` is a
  fraction of each layer's *total* weights ``N^l``: ``k^l = round_half_up(p_t * N^l)``.
* ``mode: em`` (MEST+EM): at each mutation step, per layer, ArgRemoveTo(s + p) then ArgGrowTo(s):
  drop the ``k^l`` least important active weights and grow ``k^l`` random zero weights (a swap;
  counts capped by the active and the inactive weights; the just-removed weights may be drawn again,
  as in the paper and the reference code, unless ``regrow_dropped: false``).
* ``mode: ems`` (MEST+EM&S): mutation steps alternate. On the even ones each layer grows ``k^l``
  random weights (ArgGrowTo(s - p): budget rises); the next mutation step, ``update_interval``
  steps later, removes back to the recipe's count by the importance score over all active weights,
  the new ones included (ArgRemoveTo(s): the "undo" of a bad growth). A cycle starts only if its
  prune-back falls at or before ``stop_step``, so the target is met when the mask freezes.
"""
from __future__ import annotations

from typing import Any

import torch

from gsparse.distributions import round_half_up
from gsparse.methods.base import MIN_MASK_UPDATES, LayerView, MaskChange, SparseMethod
from gsparse.methods.registry import register_method
from gsparse.options import (Option, RecipeError, RunFraction, RunProblem, boolean, choice, number, optional,
                             steps)

# The reference scripts' mutation fraction at 90% sparsity (EM: prune to 0.92, grow to 0.90;
# EM&S: grow to 0.85, prune to 0.90).
DEFAULT_MUTATION_FRACTION = {"em": 0.02, "ems": 0.05}


def increasing_steps(key: str, value: Any) -> tuple[int | RunFraction, ...]:
    """A list of strictly increasing optimizer steps (integers >= 1, or ``"N%"`` of the run)."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RecipeError(key, f"expected a list of optimizer steps (integers >= 1 or \"N%\"), got {value!r}")
    items = tuple(steps(1)(f"{key}[{index}]", item) for index, item in enumerate(value))
    ordered = [item if isinstance(item, int) else item.fraction for item in items]
    comparable = len({type(item) for item in items}) <= 1  # mixed: checked once fitted to the run
    if comparable and any(later <= earlier for earlier, later in zip(ordered, ordered[1:])):
        raise RecipeError(key, f"expected strictly increasing steps, got {[str(item) for item in items]!r}")
    return items


class MEST(SparseMethod):
    name = "mest"
    options = {
        "mode": Option("em", choice("em", "ems"), "em: drop/grow swap at each mutation (hard memory bound); "
                                                  "ems: grow to s - p, train, remove back to s (soft bound)"),
        "mutation_fraction": Option(None, optional(number(0.0, 1.0)),
                                    "p, a fraction of each layer's total weights (null: 0.02 for em, 0.05 for "
                                    "ems, the reference scripts' values)"),
        "decay_factor": Option(0.5, number(0.0, 1.0), "p is multiplied by this at every milestone"),
        "decay_milestones": Option((), increasing_steps, "optimizer steps at which p decays"),
        "stop_step": Option(None, optional(steps(1)), "tau_stop: no mutation at or after this step (null: "
                                                        "schedule.last_update_step; both null: never stop)"),
        "grad_coefficient": Option(0.0, number(0.0), "lambda in |w| + lambda * |sparse gradient|"),
        "regrow_dropped": Option(True, boolean, "em: may the random growth pick a weight removed in the same "
                                                "mutation (the paper and the reference code: yes)"),
    }

    def __init__(self, **args: Any):
        super().__init__(**args)
        if self.args.mutation_fraction is None:
            self.args.mutation_fraction = DEFAULT_MUTATION_FRACTION[self.args.mode]
        # Only the sparse gradient is read; without a gradient term no gradient is needed at all.
        self.needs_grad = self.args.grad_coefficient > 0.0
        self.regrow_dropped = self.args.regrow_dropped

    # ---- schedule ----------------------------------------------------------------------------

    @property
    def stop_step(self) -> int | None:
        if self.args.stop_step is not None:
            return self.args.stop_step
        return self.schedule.last_update_step

    def mutation_fraction_at(self, step: int) -> float:
        """p at ``step``: decayed once for every milestone reached."""
        decays = sum(1 for milestone in self.args.decay_milestones if step >= milestone)
        return self.args.mutation_fraction * self.args.decay_factor ** decays

    def mutation_index(self, step: int) -> int | None:
        """0, 1, 2, ... for the mutation steps (multiples of update_interval from first_update_step)."""
        interval, first = self.schedule.update_interval, self.schedule.first_update_step
        if step < first or step % interval:
            return None
        return step // interval - (first + interval - 1) // interval

    def mutation_counts(self, step: int) -> list[int]:
        """Weights mutated per layer at ``step``: ``round_half_up(p_t * N^l)``."""
        fraction = self.mutation_fraction_at(step)
        return [round_half_up(fraction * layer.numel) for layer in self.layers]

    def _ems_grow_counts(self, step: int) -> list[int] | None:
        """EM&S: the per-layer counts after growing at ``step``, or None if no cycle starts there."""
        index = self.mutation_index(step)
        if index is None or index % 2:
            return None
        stop = self.stop_step
        if stop is not None and step + self.schedule.update_interval > stop:
            return None
        grow = self.mutation_counts(step)
        if not any(grow):
            return None
        return [min(layer.target_active + count, layer.numel) for layer, count in zip(self.layers, grow)]

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        """No mutation in the run: an error, and so is an EM&S run ending between a growth and its
        prune-back (above the target density); fewer than MIN_MASK_UPDATES mutation steps or a
        milestone after the run: a warning."""
        schedule = recipe.schedule
        interval = schedule.update_interval
        stop = self.args.stop_step if self.args.stop_step is not None else schedule.last_update_step
        first = -(-schedule.first_update_step // interval) * interval  # the first step on the grid
        if self.args.mode == "em":
            end = total_steps if stop is None else min(total_steps, stop - 1)
            updates = 0 if end < first else (end - first) // interval + 1
            cut_cycle = None
        else:  # a growth at every other grid step whose prune-back falls at or before stop_step
            last_growth = total_steps if stop is None else min(total_steps, stop - interval)
            growths = 0 if last_growth < first else (last_growth - first) // (2 * interval) + 1
            last_growth = first + 2 * (growths - 1) * interval
            cut_cycle = last_growth if growths and last_growth + interval > total_steps else None
            updates = 2 * growths  # growth and prune-back (a cut cycle is refused below)
        if updates == 0:
            return [RunProblem("schedule.first_update_step", f"no mutation in the run: the first is at step {first:,}, "
                               f"the run has {total_steps:,} steps" + ("" if stop is None else
                                                                       f" and stop_step is {stop:,}"))]
        if cut_cycle is not None:
            return [RunProblem("method_args.stop_step", f"the run ({total_steps:,} steps) ends between the growth at "
                               f"step {cut_cycle:,} and its prune-back at step {cut_cycle + interval:,}: the model "
                               f"would end above its target density; set stop_step (e.g. \"75%\")")]
        problems = []
        if updates < MIN_MASK_UPDATES:
            problems.append(RunProblem("schedule.update_interval", f"{updates} mask updates in a run of "
                                       f"{total_steps:,} steps (every {interval:,} steps from step {first:,}), "
                                       f"fewer than {MIN_MASK_UPDATES}; give the interval as a fraction of the "
                                       f"run (e.g. \"5%\")", error=False))
        late = [milestone for milestone in self.args.decay_milestones if milestone > total_steps]
        if late:
            problems.append(RunProblem("method_args.decay_milestones", f"milestones {late} are after the run's "
                                       f"{total_steps:,} steps: p never decays there", error=False))
        return problems

    # ---- policy ------------------------------------------------------------------------------

    def needs_dense_gradient(self, step: int) -> bool:
        return self.mask_change(step) is not None  # mutations run to stop_step, past the schedule's end

    def mask_change(self, step: int) -> MaskChange | None:
        if self.args.mode == "ems":
            grown = self._ems_grow_counts(step)
            if grown is not None:
                return MaskChange.resize(layer_counts=grown)
            if self._ems_grow_counts(step - self.schedule.update_interval) is not None:
                return MaskChange.resize(layer_counts=[layer.target_active for layer in self.layers])
            return None
        if self.mutation_index(step) is None or (self.stop_step is not None and step >= self.stop_step):
            return None
        counts = self.mutation_counts(step)
        return MaskChange.swap(layer_counts=counts) if any(counts) else None

    def drop_score(self, layer: LayerView) -> torch.Tensor:
        """Eq. 1: ``|w| + lambda * |g * m|`` (the sparse gradient only)."""
        score = layer.weight.abs()
        if self.needs_grad:
            sparse_grad = torch.where(layer.mask, layer.grad, torch.zeros_like(layer.grad))
            score = score + self.args.grad_coefficient * sparse_grad.abs()
        return score

    def grow_score(self, layer: LayerView) -> torch.Tensor:
        return layer.uniform()


    @classmethod
    def harness_recipe(cls, total_steps: int, steps_per_epoch: int, update_interval: int) -> dict:
        """EM&S for a comparison run: mutate every epoch, halve p at 56% and stop at 75% of the run
        (the reference 90- and 120-of-160-epoch milestones)."""
        return {"schedule": {"update_interval": steps_per_epoch},
                "method_args": {"mode": "ems", "decay_milestones": [max(1, round(0.5625 * total_steps))],
                                "stop_step": max(2, round(0.75 * total_steps))}}


register_method("mest", MEST)
