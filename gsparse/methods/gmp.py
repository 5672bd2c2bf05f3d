"""GMP, gradual magnitude pruning (Zhu & Gupta 2017): start dense, prune by magnitude at every
update step between ``first_update_step`` (t0) and ``last_update_step`` (t0 + nΔt), following the
cubic schedule ``s_t = s_f (1 - (t - t0) / (nΔt))^3`` subtracted from ``s_f`` (initial sparsity 0):
``s_t = s_f * (1 - (1 - p)^3)`` with ``p = (t - t0) / (nΔt)``. Pruned weights never come back.
``last_update_step`` is always an update step, on the ``update_interval`` grid or not (e.g. given as
``"75%"`` of the run), so the ramp ends exactly at the target."""
from gsparse.methods.base import PruneFromDenseMethod


class GMP(PruneFromDenseMethod):
    name = "gmp"
    needs_last_update_step = True

    def pruned_fraction(self, step: int) -> float:
        start, end = self.schedule.first_update_step, self.schedule.last_update_step
        progress = min(max((step - start) / max(end - start, 1), 0.0), 1.0)
        return 1.0 - (1.0 - progress) ** 3

    def is_update_step(self, step: int) -> bool:
        return step == self.schedule.last_update_step or self.schedule.is_update_step(step)
