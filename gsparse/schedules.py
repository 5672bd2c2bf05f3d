"""When masks change and by how much: update steps and the drop-fraction decay."""
from __future__ import annotations

import math
from dataclasses import dataclass

DROP_FRACTION_DECAYS = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class UpdateSchedule:
    """Mask updates at steps ``t`` (1-based optimizer steps) with ``t % update_interval == 0``
    and ``first_update_step <= t <= last_update_step``; the drop fraction decays from
    ``drop_fraction`` to ``final_drop_fraction`` between the first and the last update step.

    A recipe may give the steps as :class:`~gsparse.options.RunFraction` s (``"2%"``); the schedule
    is usable once :meth:`gsparse.recipe.Recipe.fit_to_run` made them integers."""

    update_interval: int
    first_update_step: int
    last_update_step: int | None
    drop_fraction: float
    drop_fraction_decay: str = "constant"
    final_drop_fraction: float = 0.0

    def is_update_step(self, step: int) -> bool:
        if step < self.first_update_step or step % self.update_interval:
            return False
        return self.last_update_step is None or step <= self.last_update_step

    def updates_in_run(self, total_steps: int) -> int:
        """How many update steps a run of ``total_steps`` optimizer steps has."""
        end = total_steps if self.last_update_step is None else min(self.last_update_step, total_steps)
        if end < self.first_update_step:
            return 0
        return end // self.update_interval - (self.first_update_step - 1) // self.update_interval

    def drop_fraction_at(self, step: int) -> float:
        if self.drop_fraction_decay == "constant" or self.last_update_step is None:
            return self.drop_fraction
        span = max(self.last_update_step - self.first_update_step, 1)
        progress = min(max((step - self.first_update_step) / span, 0.0), 1.0)
        if self.drop_fraction_decay == "cosine":
            weight = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            weight = 1.0 - progress
        return self.final_drop_fraction + (self.drop_fraction - self.final_drop_fraction) * weight
