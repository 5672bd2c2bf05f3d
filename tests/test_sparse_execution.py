"""Sparse execution (recipe key ``execution``): CSR kernels give the masked dense run's results."""
import pytest
import torch

import gsparse
from gsparse import RecipeError, load_recipe
from gsparse.kernels import execution as execution_module
from gsparse.kernels.choice import ExecutionChoice


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 96), torch.nn.ReLU(), torch.nn.Linear(96, 80), torch.nn.ReLU(),
                               torch.nn.Linear(80, 5)).to(dtype)


def _recipe(method, execution, schedule=None, **extra):
    schedule = schedule or {"update_interval": 5, "drop_fraction": 0.3}
    if method == "gmp":
        schedule = {"update_interval": 5, "first_update_step": 5, "last_update_step": 20}
    if method == "acdc":  # compressed and dense phases of 6 steps, from step 7
        extra = {"method_args": {"steps_per_epoch": 3, "total_epochs": 10, "warmup_epochs": 2, "compressed_epochs": 2,
                                 "decompressed_epochs": 2, "last_decompressed_epochs": 0, "finetune_epochs": 2},
                 **extra}
    return {"method": method, "sparsity": 0.85, "execution": execution, "schedule": schedule, **extra}


def _train(method, execution, steps=30, dtype=torch.float64, accumulation=1, model=None, **extra):
    model = model or _model(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sparsifier = gsparse.Sparsifier(model, optimizer, _recipe(method, execution, **extra))
    generator = torch.Generator().manual_seed(1)
    builds = []
    for _ in range(steps):
        optimizer.zero_grad()
        for _ in range(accumulation):
            inputs = torch.randn(4, 3, 24, generator=generator, dtype=dtype)  # 3-D: leading dims flattened
            targets = torch.randint(0, 5, (4, 3), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(inputs).reshape(-1, 5), targets.reshape(-1))
            (loss / accumulation).backward()
        optimizer.step()
        if sparsifier.execution is not None:
            builds.append([layer.builds for layer in sparsifier.execution.layers])
    return model, sparsifier, builds


@pytest.mark.parametrize("method", ["rigl", "dst_ee", "set", "static", "mest", "gmp", "acdc"])
def test_sparse_execution_trains_as_masked_dense_execution(method):
    """float64: the masks of every update are the same (RigL/DST-EE grow by the dense gradient,
    computed at update steps only) and the weights agree to rounding."""
    dense_model, dense, _ = _train(method, "dense", accumulation=2)
    sparse_model, sparse, _ = _train(method, "sparse", accumulation=2)
    report = sparse.execution_report()
    assert {entry["mode"] for entry in report.values()} == {"sparse"}
    assert sparse.engine.num_updates == dense.engine.num_updates
    assert (dense.engine.num_updates == 0) == (method == "static")
    for name, mask in dense.masks.items():
        assert torch.equal(mask, sparse.masks[name]), name
    for ours, theirs in zip(sparse_model.parameters(), dense_model.parameters()):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    inputs = torch.randn(7, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(sparse_model(inputs), dense_model(inputs), rtol=0, atol=1e-12)


def test_structure_is_rebuilt_exactly_when_masks_change():
    _, sparsifier, builds = _train("rigl", "sparse", steps=23)
    # built once at attach, then once after each update (steps 5, 10, 15, 20), never otherwise
    assert [row[0] for row in builds] == [1] * 4 + [2] * 5 + [3] * 5 + [4] * 5 + [5] * 4
    assert sparsifier.engine.num_updates == 4
    assert all(len(set(row)) == 1 for row in builds)


def test_gradients_equal_masked_dense_and_inactive_ones_zero_between_updates():
    model = _model()
    reference = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sparsifier = gsparse.Sparsifier(model, optimizer, _recipe("rigl", "sparse"))
    gsparse.Sparsifier(reference, torch.optim.SGD(reference.parameters(), lr=0.0), _recipe("rigl", "dense"))
    inputs = torch.randn(6, 24, dtype=torch.float64)
    for net in (model, reference):
        net(inputs).square().sum().backward()
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        if name in sparsifier.masks:
            mask = sparsifier.masks[name]
            assert torch.all(ours.grad[~mask] == 0)  # sampled: nothing computed off the mask (step 1 updates nothing)
            assert torch.allclose(ours.grad[mask], theirs.grad[mask], rtol=0, atol=1e-12)
        else:
            assert torch.allclose(ours.grad, theirs.grad, rtol=0, atol=1e-12)


def test_update_steps_get_the_dense_gradient():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    sparsifier = gsparse.Sparsifier(model, optimizer, _recipe("rigl", "sparse"))
    sparsifier.engine.step = 4  # the next optimizer step (5) updates the masks
    model(torch.randn(6, 24, dtype=torch.float64)).square().sum().backward()
    first = model[0].weight
    assert int((first.grad[~sparsifier.masks["0.weight"]] != 0).sum()) > 0


def test_evaluation_and_copies_follow_the_weights_however_they_change():
    """No-grad forwards read the current values (an in-place .data edit included), and a deepcopy of
    the model (EMA, snapshots) computes with its own weights."""
    import copy

    model, sparsifier, _ = _train("rigl", "sparse", steps=3)
    reference = _model()
    reference.load_state_dict(model.state_dict())
    inputs = torch.randn(5, 24, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(inputs), reference(inputs), rtol=0, atol=1e-12)
        model[2].weight.data.mul_(2.0)  # bypasses the parameter's version counter
        reference[2].weight.data.mul_(2.0)
        assert torch.allclose(model(inputs), reference(inputs), rtol=0, atol=1e-12)
        snapshot = copy.deepcopy(model)
        for parameter in snapshot.parameters():
            parameter.mul_(0.5)
        halved = copy.deepcopy(reference)
        for parameter in halved.parameters():
            parameter.mul_(0.5)
        assert torch.allclose(snapshot(inputs), halved(inputs), rtol=0, atol=1e-12)
        assert torch.allclose(model(inputs), reference(inputs), rtol=0, atol=1e-12)


def test_a_forced_update_needs_dense_gradients_and_then_equals_dense_execution():
    results = {}
    for execution in ("dense", "sparse"):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        sparsifier = gsparse.Sparsifier(model, optimizer, _recipe("rigl", execution))
        inputs, targets = torch.randn(8, 24, dtype=torch.float64), torch.arange(8) % 5
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        if execution == "sparse":
            with pytest.raises(RuntimeError, match=r"update_masks\(\) after a backward with sparse execution"):
                sparsifier.update_masks()
            optimizer.zero_grad()
            with sparsifier.dense_gradients():
                torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        sparsifier.update_masks()
        optimizer.step()
        results[execution] = (sparsifier.masks, [p.detach().clone() for p in model.parameters()])
    for name, mask in results["dense"][0].items():
        assert torch.equal(mask, results["sparse"][0][name])
    for ours, theirs in zip(results["sparse"][1], results["dense"][1]):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_mest_mutating_past_the_schedule_gets_dense_gradients_there():
    args = {"method_args": {"stop_step": 20}}
    recipe_schedule = {"update_interval": 5, "drop_fraction": 0.3, "last_update_step": 5}
    dense_model, dense, _ = _train("mest", "dense", steps=22, **args, schedule=recipe_schedule)
    sparse_model, sparse, _ = _train("mest", "sparse", steps=22, **args, schedule=recipe_schedule)
    assert sparse.engine.num_updates == dense.engine.num_updates >= 3
    for name, mask in dense.masks.items():
        assert torch.equal(mask, sparse.masks[name])
    for ours, theirs in zip(sparse_model.parameters(), dense_model.parameters()):
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


def test_auto_takes_one_decision_per_layer_and_a_resumed_run_keeps_it(monkeypatch):
    calls = []

    def fake_choice(out_features, in_features, nnz, rows, dtype, device):
        calls.append((out_features, in_features, rows))
        sparse = out_features * in_features >= 96 * 80  # the two big layers
        return ExecutionChoice("sparse" if sparse else "dense", 2.0, 1.0 if sparse else 3.0, "fake")

    monkeypatch.setattr(execution_module, "choose_execution", fake_choice)
    model, sparsifier, _ = _train("rigl", "auto", steps=12)
    assert calls == [(96, 24, 12), (80, 96, 12), (5, 80, 12)]  # once, after step 1, with 4x3 rows
    report = sparsifier.execution_report()
    assert [report[name]["mode"] for name in ("0.weight", "2.weight", "4.weight")] == ["dense", "sparse", "dense"]
    assert report["2.weight"]["reason"] == "auto at 12 rows: dense 2.000 ms, sparse 1.000 ms per forward+backward"
    state = sparsifier.state_dict()
    restored_model = _model()
    restored = gsparse.Sparsifier(restored_model, torch.optim.SGD(restored_model.parameters(), lr=0.05),
                                  _recipe("rigl", "auto"))
    restored.load_state_dict(state)
    assert restored.execution_report() == report and len(calls) == 3


def test_what_cannot_run_sparse_says_why():
    with pytest.raises(RecipeError, match="recipe key 'execution': 'sparse' needs a method that keeps its layers "
                                          "sparse between mask changes; method 'admm' adds terms to the dense "
                                          "gradients every step: use dense or auto"):
        load_recipe({"method": "admm", "sparsity": 0.5, "execution": "sparse"})
    with pytest.raises(RecipeError, match="recipe key 'execution'"):
        load_recipe({"method": "rigl", "sparsity": 0.5, "execution": "fast"})
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Conv1d(1, 2, 3))
    sparsifier = gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                    {"method": "rigl", "sparsity": 0.5, "execution": "sparse"})
    report = sparsifier.execution_report()
    assert report["0.weight"]["mode"] == "sparse"
    assert report["1.weight"] == {"mode": "dense", "reason": "a Conv1d: only torch.nn.Linear and PyG's Linear run "
                                  "with sparse kernels", "dense_ms": None, "sparse_ms": None, "density": 1.0,
                                  "kernel": None}
    admm_model = _model()
    admm = gsparse.Sparsifier(admm_model, torch.optim.SGD(admm_model.parameters(), lr=0.1),
                              {"method": "admm", "sparsity": 0.5, "execution": "auto",
                               "method_args": {"pretrain_steps": 4, "admm_steps": 8, "admm_interval": 2}})
    assert {entry["reason"] for entry in admm.execution_report().values()} == {
        "method 'admm' adds terms to the dense gradients every step"}


def test_a_dtype_without_csr_kernels_runs_dense():
    model, _, _ = _train("rigl", "sparse", steps=6, dtype=torch.bfloat16)
    reference, _, _ = _train("rigl", "dense", steps=6, dtype=torch.bfloat16)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)  # bf16 on CPU: no CSR kernel, so the same dense kernels ran


def test_remove_restores_the_layers_forward():
    model = _model()
    sparsifier = gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1), _recipe("rigl", "sparse"))
    assert "forward" in model[0].__dict__
    sparsifier.remove()
    assert "forward" not in model[0].__dict__ and sparsifier.execution_report() == {}


def test_auto_waits_for_a_dense_phase_to_end(monkeypatch):
    """GMP starts dense: auto leaves its layers pending (dense) until a mask is at most half active,
    then decides once."""
    calls = []

    def fake_choice(out_features, in_features, nnz, rows, dtype, device):
        calls.append((out_features, in_features, nnz))
        return ExecutionChoice("sparse", 2.0, 1.0, "fake")

    monkeypatch.setattr(execution_module, "choose_execution", fake_choice)
    densities = []
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, _recipe("gmp", "auto"))
    for step in range(1, 26):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 24, dtype=torch.float64)), torch.arange(4))
        loss.backward()
        optimizer.step()
        report = sparsifier.execution_report()
        densities.append((step, report["2.weight"]["mode"], round(report["2.weight"]["density"], 2)))
    modes = {step: mode for step, mode, _ in densities}
    first_sparse = min(step for step, mode in modes.items() if mode == "sparse")
    assert all(mode == "pending" for step, mode in modes.items() if step < first_sparse)
    assert dict((step, density) for step, _, density in densities)[first_sparse] <= 0.5
    assert dict((step, density) for step, _, density in densities)[first_sparse - 5] > 0.5
    assert modes[25] == "sparse" and len(calls) == 3  # each layer timed once


def test_a_resumed_auto_run_decides_pending_layers_on_the_rows_it_then_sees(monkeypatch):
    monkeypatch.setattr(execution_module, "choose_execution",
                        lambda out, inp, nnz, rows, dtype, device: ExecutionChoice("sparse", 2.0, 1.0, "fake"))

    def step(model, optimizer):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(4, 24, dtype=torch.float64)), torch.arange(4)).backward()
        optimizer.step()

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sparsifier = gsparse.Sparsifier(model, optimizer, _recipe("gmp", "auto"))
    for _ in range(6):  # GMP still more than half dense: the layers wait
        step(model, optimizer)
    assert {entry["mode"] for entry in sparsifier.execution_report().values()} == {"pending"}
    resumed_model = _model()
    resumed_optimizer = torch.optim.SGD(resumed_model.parameters(), lr=0.05)
    resumed = gsparse.Sparsifier(resumed_model, resumed_optimizer, _recipe("gmp", "auto"))
    resumed.load_state_dict(sparsifier.state_dict())
    for _ in range(19):
        step(resumed_model, resumed_optimizer)
    report = resumed.execution_report()
    assert report["2.weight"]["mode"] == "sparse"
    assert report["2.weight"]["reason"] == "auto at 4 rows: dense 2.000 ms, sparse 1.000 ms per forward+backward"


def test_a_sparse_layer_more_than_half_active_says_it_runs_dense():
    model = _model()
    sparsifier = gsparse.Sparsifier(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                    {"method": "rigl", "sparsity": 0.3, "execution": "sparse"})
    entry = sparsifier.execution_report()["0.weight"]
    assert entry["mode"] == "sparse" and entry["density"] == pytest.approx(0.7, abs=1e-3)
    assert entry["reason"] == "execution: sparse; 0.70 of its weights active now, above 0.5: runs dense until then"
    inputs = torch.randn(3, 24, dtype=torch.float64)
    reference = _model()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(inputs), reference(inputs))  # F.linear ran, bit for bit
