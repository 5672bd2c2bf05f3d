import contextlib

import pytest
import torch

from gsparse.methods import register_method, registry


@pytest.fixture
def register_temporarily():
    """``register_method`` for one test: other tests (e.g. the property tests, which draw from every
    registered method) must not meet its toy methods."""
    names = []

    def register(name, cls):
        register_method(name, cls, replace=True)
        names.append(name)

    yield register
    for name in names:
        registry.METHODS.pop(name, None)


def small_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)
    )


def linear_conv_model(seed: int = 0) -> torch.nn.Module:
    """Linear 24->96, Conv1d 96->40 (k=3) and Linear 40->5: rows of 24, 288 and 40 weights (the
    structured-mask tests: blocks, N:M groups). Run it with :func:`train_structured`."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 96), torch.nn.ReLU(), torch.nn.Conv1d(96, 40, 3), torch.nn.Flatten(),
                               torch.nn.Linear(40, 5))


def train_structured(model, optimizer, sparsifier, steps: int):
    """Train :func:`linear_conv_model` for ``steps`` optimizer steps on seeded random data; yields
    ``(step, grown)`` after each step, ``grown`` being the per-layer counts of the update made at
    that step (None without one)."""
    generator = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        hidden = model[1](model[0](torch.randn(8, 24, generator=generator))).unsqueeze(-1).expand(-1, -1, 3)
        outputs = model[4](model[3](model[2](hidden)))
        torch.nn.functional.cross_entropy(outputs, torch.randint(0, 5, (8,), generator=generator)).backward()
        optimizer.step()
        update = sparsifier.last_update
        yield step, update["grown"] if update and update["step"] == step else None


def make_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    raise ValueError(name)


def batch_for_step(step: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic data per step, so an interrupted run sees the same batches."""
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = torch.randn(batch_size, 12, generator=generator)
    targets = (inputs[:, :4].argmax(dim=1) + (inputs[:, 4] > 0).long()) % 4
    return inputs, targets


def train_step(model, optimizer, step: int) -> float:
    inputs, targets = batch_for_step(step)
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def sparse_run(recipe, first: int, last: int, state: dict | None = None):
    """Train ``small_mlp`` with AdamW and a Sparsifier on ``recipe`` for steps ``first..last``,
    first restoring ``state`` (model, optimizer, sparsifier) if given; returns the three."""
    import gsparse

    model = small_mlp(seed=7 if state else 0)  # a resumed run must not depend on its own init
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, recipe)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sparsifier.load_state_dict(state["sparsifier"])
    for step in range(first, last + 1):
        train_step(model, optimizer, step)
    return model, optimizer, sparsifier


def assert_resume_bitwise(recipe, steps: int, resume_at: int):
    """Stopping after ``resume_at`` and resuming from the saved states ends exactly where an
    uninterrupted run of ``steps`` does: weights, masks, counters, method state, counts."""
    model, _, sparsifier = sparse_run(recipe, 1, steps)
    first = sparse_run(recipe, 1, resume_at)
    state = {"model": first[0].state_dict(), "optimizer": first[1].state_dict(), "sparsifier": first[2].state_dict()}
    resumed_model, _, resumed = sparse_run(recipe, resume_at + 1, steps, state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()))
    for layer, other in zip(sparsifier.engine.layers, resumed.engine.layers):
        assert torch.equal(layer.mask, other.mask) and torch.equal(layer.counter, other.counter)
        assert layer.extra.keys() == other.extra.keys()
        assert all(torch.equal(layer.extra[key], other.extra[key]) for key in layer.extra)
        assert layer.active == other.active
    engine, resumed_engine = sparsifier.engine, resumed.engine
    assert (engine.num_updates, engine.skipped_updates, engine.layer_active_steps) == \
        (resumed_engine.num_updates, resumed_engine.skipped_updates, resumed_engine.layer_active_steps)
    assert engine.method.state_dict() == resumed_engine.method.state_dict()
    return sparsifier, resumed


@contextlib.contextmanager
def killed_after_epoch(epoch: int):
    """Inside, the training runner dies (KeyboardInterrupt) right after writing the checkpoint of
    ``epoch``, as a killed job would; a run started afterwards can resume from it."""
    import pytest

    from gsparse.training import runner

    original = runner._Trainer.save

    def save_then_die(self, run_dir, finished_epoch, history):
        original(self, run_dir, finished_epoch, history)
        if finished_epoch == epoch:
            raise KeyboardInterrupt("killed")

    runner._Trainer.save = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        runner._Trainer.save = original
