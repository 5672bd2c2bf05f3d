"""MEST's data-efficient two-phase training (Yuan et al., NeurIPS 2021, section 4.3) on Toneva et
al.'s forgetting events (ICLR 2019): count how often each training example is forgotten during a
first phase of training, then drop the easy ones and train the remaining epochs on the rest.

Rules implemented
-----------------
* A *presentation* is one use of an example in a training batch; ``correct`` is whether the
  model's prediction on that training forward pass (before the optimizer step, augmentation and
  train mode included) was right - what Toneva's and the MEST reference code record.
* A *forgetting event* is a presentation that is incorrect while the example's previous
  presentation was correct. Before its first presentation an example counts as unlearned, so a
  first presentation is never a forgetting event.
* The forgetting score ``f(x)`` is the number of forgetting events during the first phase, and
  ``inf`` for an example never classified correctly (never learned, or never presented). This is
  Toneva's convention: their ``sort_examples_by_forgetting`` (copied in MEST's code) gives a
  never-learned example the number of presentations of the whole run, more than any learned
  example can reach, i.e. "forgotten infinitely often"; ``inf`` says the same without a run length.
* After the first phase the examples with ``f(x) <= th`` are dropped and the remaining epochs
  train on ``{x : f(x) > th}`` only. (The paper's equation (2) prints ``f(x_i) <= th`` as the
  compressed set, but its text and Figure 4 remove the examples forgotten at most ``th`` times;
  ``th = 0`` drops exactly the unforgettable examples.) MEST's code instead removes the
  ``remove_n`` lowest-scored examples; :meth:`ForgettingTracker.kept_mask` offers both, ties broken
  by example index.

Distributed use (DDP, DeepSpeed ZeRO 0-3)
-----------------------------------------
Each rank calls :meth:`ForgettingTracker.update` with its own share of every batch, locally and
without communication; :meth:`ForgettingTracker.merge` (a collective over the data-parallel
group) then brings every rank the exact global state. Exactness is defined against one process
that, at its ``t``-th update, sees the concatenation of all ranks' ``t``-th batches in rank order
(so every rank must call ``update`` the same number of times, e.g. once per micro-batch). An
example's presentations between two merges may fall on different ranks (a reshuffle every epoch
does that), and the forgetting transition between its last presentation on one rank and its next
on another cannot be recovered from per-rank sums of counters (an all_reduce). So ``merge`` all-
gathers the presentations made since the last merge, as ``(update number, example, correct)``
triples, and every rank replays them in the single process's order onto the replicated
per-example state (event count, last correctness, ever correct, presentation count). It costs
24 bytes per presentation since the last merge (once per epoch: about 24 bytes per example, the
size of an all_reduce of three per-example counters), and is exact whatever the interleaving, the
sampler or the padding. Pass the data-parallel group (default: the world; under DeepSpeed
``engine.data_parallel_group``, i.e. ``deepspeed.utils.groups._get_data_parallel_group()``); ranks
that hold the same data (tensor/pipeline-parallel peers) must not be in it, or their presentations
count twice. ZeRO's stage does not matter: only the data is split here, never a tensor.

:class:`ForgettingSampler` is a drop-in ``DistributedSampler`` (``num_replicas``, ``rank``,
``shuffle``, ``seed``, ``drop_last``, ``set_epoch``; in the first phase it yields exactly what
``DistributedSampler`` yields) over all examples during the first phase and over the kept ones
afterwards, shuffled identically on every rank per ``(seed, epoch)``, each rank taking every
``num_replicas``-th example of the epoch's order. Its ``set_epoch`` at the first second-phase
epoch merges the tracker (a collective: every rank calls it, as a DataLoader loop does) and
fixes the kept set::

    tracker = ForgettingTracker(len(dataset), group=dp_group)
    sampler = ForgettingSampler(tracker, first_phase_epochs=70, threshold=0, group=dp_group, seed=0)
    loader = DataLoader(IndexedDataset(dataset), batch_size=micro_batch, sampler=sampler)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        for indices, inputs, targets in loader:
            logits = model(inputs)
            if sampler.in_first_phase:
                tracker.update(indices, logits.argmax(1) == targets)
            ...
        tracker.merge()            # optional each epoch; makes state_dict() identical on all ranks
    checkpoint = {"tracker": tracker.state_dict(), "sampler": sampler.state_dict(), ...}

Neither class touches the model: this is a data-side wrapper, usable with or without a gsparse
recipe.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["ForgettingSampler", "ForgettingTracker", "IndexedDataset"]


def _group_rank_and_size(group) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise RuntimeError("a process group was given but torch.distributed is not initialized")
    return 0, 1


def _collective_device(group) -> torch.device:
    import torch.distributed as dist

    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


class ForgettingTracker:
    """Per-example forgetting events (Toneva et al.), counted locally per rank and merged exactly.

    ``num_examples``: size of the indexed training set (indices are ``0 .. num_examples - 1``).
    ``group``: the data-parallel process group :meth:`merge` gathers over; ``None`` is the world
    (or a single process when torch.distributed is not initialized).

    Merged state (identical on every rank after :meth:`merge`), one entry per example:
    ``forgetting_events`` (int64), ``last_correct`` (bool), ``ever_correct`` (bool) and
    ``presentations`` (int64). Presentations given to :meth:`update` since the last merge wait in
    this rank's pending log and are not yet in the merged state.
    """

    def __init__(self, num_examples: int, group=None):
        self.num_examples = _check_count("num_examples", num_examples, minimum=1)
        self.group = group
        self.forgetting_events = torch.zeros(num_examples, dtype=torch.int64)
        self.last_correct = torch.zeros(num_examples, dtype=torch.bool)
        self.ever_correct = torch.zeros(num_examples, dtype=torch.bool)
        self.presentations = torch.zeros(num_examples, dtype=torch.int64)
        self.updates = 0  # update() calls on this rank since the start (the order key of a batch)
        self._pending: list[torch.Tensor] = []  # per update: int64 [n, 3] rows (update number, index, correct)

    # ---------------------------------------------------------------- counting
    def update(self, indices, correct) -> None:
        """Record one batch of this rank: ``indices`` (example indices, any integer tensor or
        sequence) and ``correct`` (same length, bool or 0/1: the training forward pass classified
        the example correctly). Local; call it the same number of times on every rank."""
        indices = torch.as_tensor(indices).detach().to("cpu").reshape(-1)
        correct = torch.as_tensor(correct).detach().to("cpu").reshape(-1)
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices: expected an integer tensor, got {indices.dtype}")
        if correct.numel() != indices.numel():
            raise ValueError(f"correct: expected {indices.numel()} values (one per index), got {correct.numel()}")
        if correct.dtype.is_floating_point and not bool(((correct == 0) | (correct == 1)).all()):
            raise ValueError("correct: expected booleans or 0/1 values")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_examples):
            raise IndexError(f"indices: expected values in [0, {self.num_examples}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        rows = torch.empty(indices.numel(), 3, dtype=torch.int64)
        rows[:, 0] = self.updates
        rows[:, 1] = indices.to(torch.int64)
        rows[:, 2] = correct.to(torch.bool).to(torch.int64)
        self._pending.append(rows)
        self.updates += 1

    @property
    def pending(self) -> int:
        """Presentations recorded on this rank since the last merge."""
        return sum(rows.shape[0] for rows in self._pending)

    def merge(self) -> torch.Tensor:
        """Fold every rank's pending presentations into the merged state, in the order of one
        process seeing, update after update, all ranks' batches in rank order; returns
        :meth:`scores`. A collective over ``group`` when torch.distributed is initialized."""
        local = torch.cat(self._pending) if self._pending else torch.empty(0, 3, dtype=torch.int64)
        _, world = _group_rank_and_size(self.group)
        if world > 1:
            local = self._gather(local, world)  # rows of rank 0, then rank 1, ...: (rank, update, position) order
        self._replay(local)
        self._pending = []
        return self.scores()

    def _gather(self, local: torch.Tensor, world: int) -> torch.Tensor:
        import torch.distributed as dist

        device = _collective_device(self.group)
        length = torch.tensor([local.shape[0]], dtype=torch.int64, device=device)
        lengths = [torch.zeros_like(length) for _ in range(world)]
        dist.all_gather(lengths, length, group=self.group)
        lengths = [int(n) for n in lengths]
        padded = torch.zeros(max(lengths), 3, dtype=torch.int64, device=device)
        padded[:local.shape[0]] = local.to(device)
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded, group=self.group)
        return torch.cat([piece[:n].to("cpu") for piece, n in zip(pieces, lengths)])

    def _replay(self, rows: torch.Tensor) -> None:
        """Apply presentations given in (rank, update, position) order, exactly as one process
        handling them in (update, rank, position) order would."""
        if rows.shape[0] == 0:
            return
        # stable sorts: by update number (keeps rank, position order within it), then by example
        # (keeps the chronological order of each example's presentations)
        rows = rows[torch.sort(rows[:, 0], stable=True).indices]
        rows = rows[torch.sort(rows[:, 1], stable=True).indices]
        example, correct = rows[:, 1], rows[:, 2].to(torch.bool)
        first = torch.ones_like(correct)
        first[1:] = example[1:] != example[:-1]
        last = torch.ones_like(correct)
        last[:-1] = example[1:] != example[:-1]
        previous = torch.empty_like(correct)
        previous[1:] = correct[:-1]
        previous[first] = self.last_correct[example[first]]
        forgotten = previous & ~correct
        size = self.num_examples
        self.forgetting_events += torch.bincount(example[forgotten], minlength=size)
        self.presentations += torch.bincount(example, minlength=size)
        self.ever_correct[example[correct]] = True
        self.last_correct[example[last]] = correct[last]

    # ---------------------------------------------------------------- results (merged state)
    def scores(self) -> torch.Tensor:
        """``f(x)`` per example (float64): forgetting events, ``inf`` if never classified
        correctly (Toneva's convention; includes examples never presented)."""
        scores = self.forgetting_events.to(torch.float64)
        scores[~self.ever_correct] = math.inf
        return scores

    def kept_mask(self, threshold: int | None = None, drop_count: int | None = None) -> torch.Tensor:
        """The examples the second phase trains on (bool per example). Give exactly one of
        ``threshold`` (MEST eq. (2): drop ``f(x) <= threshold``) or ``drop_count`` (MEST's code,
        ``--remove-n``: drop the ``drop_count`` lowest scores, ties by example index)."""
        if (threshold is None) == (drop_count is None):
            raise ValueError("kept_mask: give exactly one of threshold or drop_count")
        scores = self.scores()
        if threshold is not None:
            return scores > _check_count("threshold", threshold)
        drop_count = _check_count("drop_count", drop_count)
        if drop_count > self.num_examples:
            raise ValueError(f"drop_count: expected at most num_examples={self.num_examples}, got {drop_count}")
        order = torch.sort(scores, stable=True).indices
        kept = torch.ones(self.num_examples, dtype=torch.bool)
        kept[order[:drop_count]] = False
        return kept

    def kept_indices(self, threshold: int | None = None, drop_count: int | None = None) -> torch.Tensor:
        """Indices (ascending, int64) of :meth:`kept_mask`."""
        return torch.nonzero(self.kept_mask(threshold, drop_count)).reshape(-1)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Merged state plus this rank's pending presentations. After :meth:`merge` it is the same
        on every rank (one copy may be saved); with pending presentations each rank saves its own."""
        pending = torch.cat(self._pending) if self._pending else torch.empty(0, 3, dtype=torch.int64)
        return {"num_examples": self.num_examples, "forgetting_events": self.forgetting_events.clone(),
                "last_correct": self.last_correct.clone(), "ever_correct": self.ever_correct.clone(),
                "presentations": self.presentations.clone(), "updates": self.updates, "pending": pending.clone()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(f"load_state_dict: the state is for {state['num_examples']} examples, "
                             f"this tracker has {self.num_examples}")
        self.forgetting_events = state["forgetting_events"].to("cpu", torch.int64).clone()
        self.last_correct = state["last_correct"].to("cpu", torch.bool).clone()
        self.ever_correct = state["ever_correct"].to("cpu", torch.bool).clone()
        self.presentations = state["presentations"].to("cpu", torch.int64).clone()
        self.updates = int(state["updates"])
        pending = state["pending"].to("cpu", torch.int64)
        self._pending = [pending.clone()] if pending.shape[0] else []


class ForgettingSampler(Sampler[int]):
    """MEST's two-phase sampler, compatible with ``torch.utils.data.DistributedSampler``.

    Epochs before ``first_epoch + first_phase_epochs`` (as given to :meth:`set_epoch`) use every
    example; from that epoch on, only ``tracker.kept_mask(threshold)`` (or ``drop_count``). The
    epoch's order is a permutation of the pool drawn from ``seed + epoch`` (the same on every rank),
    padded by repetition (``drop_last=False``) or cut (``drop_last=True``) to a multiple of
    ``num_replicas``; rank ``r`` takes positions ``r, r + num_replicas, ...`` - ``DistributedSampler``'s
    rule, so the first phase yields exactly what ``DistributedSampler`` would.

    ``num_replicas`` and ``rank`` default to the size of and rank in ``group`` (the data-parallel
    group; ``None`` is the world, or 1 and 0 without torch.distributed). ``first_epoch``: the number
    of the first epoch (0 as ``DistributedSampler`` loops count; 1 for gsparse's runner).
    """

    def __init__(self, tracker: ForgettingTracker, first_phase_epochs: int, threshold: int | None = 0,
                 drop_count: int | None = None, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, first_epoch: int = 0, group=None):
        if not isinstance(tracker, ForgettingTracker):
            raise TypeError(f"tracker: expected a ForgettingTracker, got {type(tracker).__name__}")
        self.tracker = tracker
        self.first_phase_epochs = _check_count("first_phase_epochs", first_phase_epochs)
        if (threshold is None) == (drop_count is None):
            raise ValueError("ForgettingSampler: give exactly one of threshold or drop_count")
        self.threshold = None if threshold is None else _check_count("threshold", threshold)
        self.drop_count = None if drop_count is None else _check_count("drop_count", drop_count)
        if self.drop_count is not None and self.drop_count >= tracker.num_examples:
            raise ValueError(f"drop_count: expected less than num_examples={tracker.num_examples}, got {drop_count}")
        if num_replicas is None or rank is None:
            group_rank, group_size = _group_rank_and_size(group)
            num_replicas = group_size if num_replicas is None else num_replicas
            rank = group_rank if rank is None else rank
        self.num_replicas = _check_count("num_replicas", num_replicas, minimum=1)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank: expected an integer in [0, {num_replicas}), got {rank!r}")
        self.rank = rank
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.first_epoch = int(first_epoch)
        self.epoch = self.first_epoch
        self.kept: torch.Tensor | None = None  # ascending example indices of the second phase; None in the first

    @property
    def second_phase_epoch(self) -> int:
        """The first epoch trained on the kept examples only."""
        return self.first_epoch + self.first_phase_epochs

    @property
    def in_first_phase(self) -> bool:
        """Whether the current epoch counts forgetting events (uses every example)."""
        return self.epoch < self.second_phase_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch. The first call at or after :attr:`second_phase_epoch` merges the
        tracker (a collective over its group) and fixes the kept set."""
        self.epoch = int(epoch)
        if not self.in_first_phase and self.kept is None:
            self.tracker.merge()
            kept = self.tracker.kept_indices(self.threshold, self.drop_count)
            if kept.numel() == 0:
                raise ValueError(f"ForgettingSampler: threshold={self.threshold} drops every example; "
                                 "the second phase would have no data")
            self.kept = kept

    def _pool_size(self) -> int:
        return self.tracker.num_examples if self.in_first_phase or self.kept is None else self.kept.numel()

    def __len__(self) -> int:
        size = self._pool_size()
        if self.drop_last and size % self.num_replicas:
            return math.ceil((size - self.num_replicas) / self.num_replicas)
        return math.ceil(size / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        if not self.in_first_phase and self.kept is None:
            raise RuntimeError("ForgettingSampler: call set_epoch() for a second-phase epoch before iterating")
        size = self._pool_size()
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(size, generator=generator)
        else:
            order = torch.arange(size)
        if not self.in_first_phase:
            order = self.kept[order]
        order = order.tolist()
        per_rank = len(self)
        total = per_rank * self.num_replicas
        if total > len(order):
            padding = total - len(order)
            order += (order * math.ceil(padding / len(order)))[:padding]
        order = order[:total]
        return iter(order[self.rank:total:self.num_replicas])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "kept": None if self.kept is None else self.kept.clone(), "seed": self.seed,
                "first_phase_epochs": self.first_phase_epochs, "threshold": self.threshold,
                "drop_count": self.drop_count}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "first_phase_epochs", "threshold", "drop_count"):
            if state[key] != getattr(self, key):
                raise ValueError(f"load_state_dict: {key}={state[key]!r} in the state, {getattr(self, key)!r} here")
        self.epoch = int(state["epoch"])
        self.kept = None if state["kept"] is None else state["kept"].to("cpu", torch.int64).clone()


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so each item comes with its index: ``(index, *item)`` for a tuple
    item, ``(index, item)`` otherwise - the index :meth:`ForgettingTracker.update` needs."""

    def __init__(self, dataset: Sequence):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return (index, *item) if isinstance(item, tuple) else (index, item)
