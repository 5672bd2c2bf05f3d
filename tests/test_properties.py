"""Property-based checks of the input-validation promise (issue 14): every recipe, DeepSpeed config
and edge-list file gives a valid result or ONE error of gsparse's own type - never another
exception, never a non-finite value."""
import gzip
import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import small_mlp, train_step
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gsparse
from gsparse import RecipeError, layer_densities, load_recipe
from gsparse.deepspeed.config import DeepSpeedConfigError, load_deepspeed_config
from gsparse.distributions import active_counts
from gsparse.methods import available_methods, get_method
from gsparse.methods.base import SparseMethod
from gsparse.tasks.graphs import GraphFormatError, load_edges
from gsparse.tasks.graphs.datasets import DatasetError
from gsparse.tasks.graphs.io import FORMATS, TemporalEdges
from gsparse.training.runner import deepspeed_config_for

PROPERTY = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MLP_WEIGHTS = {"0.weight": (48, 12), "2.weight": (32, 48), "4.weight": (4, 32)}

# ---- 1. recipes ------------------------------------------------------------------------------------

special_floats = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1.0, 1e-300, 1e300, 0.5, 0.9, 0.99,
                                  10 ** 400])  # an int beyond float range, as YAML reads 400 digits
percents = st.one_of(st.integers(-5, 120).map(lambda n: f"{n}%"),
                     st.sampled_from(["2.5%", "1/3%", "%", "x%", "1/0%", " 50 %", "1e2%", "nan%", "inf%", "50"]))
scalars = st.one_of(st.integers(-3, 300), special_floats, percents, st.none(), st.booleans(),
                    st.sampled_from(["auto", "junk", "", "em", "layer", "global", "constant", "cosine"]))
values = st.one_of(scalars, st.lists(st.one_of(st.integers(-2, 50), percents), max_size=3))
methods = st.one_of(st.sampled_from(sorted(available_methods())), st.sampled_from(["junk", "", "RigL"]))
SCHEDULE_KEYS = ["update_interval", "first_update_step", "last_update_step", "drop_fraction",
                 "drop_fraction_decay", "final_drop_fraction"]


VALID_ARGS = {"steps_per_epoch": "auto", "epochs": "auto", "total_epochs": "auto", "pretrain_steps": "10%",
              "admm_steps": "40%", "admm_interval": "10%"}  # the required method_args, given relative to the run


@st.composite
def method_args_for(draw, method):
    names = sorted(get_method(method).options) if method in available_methods() else []
    args = {name: VALID_ARGS[name] for name in names if get_method(method).options[name].required}
    keys = st.sampled_from(names + ["junk_key"]) if names else st.just("junk_key")
    args.update(draw(st.dictionaries(keys, values, max_size=2)))
    return args


@st.composite
def recipe_dicts(draw):
    """A valid recipe of a registered method with up to 3 keys set to random (often invalid) values."""
    method = draw(st.sampled_from(sorted(available_methods())))
    recipe = {"method": method, "sparsity": draw(st.floats(0.0, 0.99)),
              "distribution": draw(st.sampled_from(["uniform", "er", "erk"])),
              "schedule": {"update_interval": draw(st.sampled_from([1, 3, "10%", "50%"])), "last_update_step": "75%"},
              "method_args": {name: VALID_ARGS[name] for name in get_method(method).options
                              if get_method(method).options[name].required}}
    mutations = {
        "method": methods,
        "sparsity": st.one_of(special_floats, scalars),
        "distribution": scalars,
        "erk_power_scale": st.one_of(special_floats, st.floats(1e-3, 50), st.sampled_from([1e-200, 1e200])),
        "layer_sparsity": st.one_of(st.dictionaries(st.sampled_from([*MLP_WEIGHTS, "nomatch*"]),
                                                    st.one_of(special_floats, scalars), max_size=2), scalars),
        "schedule": st.one_of(st.dictionaries(st.sampled_from(SCHEDULE_KEYS + ["junk"]), values, max_size=4), scalars),
        "method_args": method_args_for(method),
        "seed": st.one_of(st.integers(-2, 10), scalars),
        "mask_weights_after_step": st.sampled_from(["auto", "always", "never", None]),
        "params": st.one_of(st.fixed_dictionaries({}, optional={
            "dense_first_layer": st.booleans(), "exclude": st.sampled_from([[], ["4.*"], "0.weight", [3]])}), scalars),
        "junk": scalars,
    }
    for key in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True)):
        if key == "schedule" and draw(st.booleans()):  # one schedule key, the others kept valid
            recipe["schedule"] = {**recipe["schedule"], draw(st.sampled_from(SCHEDULE_KEYS)): draw(values)}
        else:
            recipe[key] = draw(mutations[key])
    return recipe


def check_recipe_end_to_end(recipe_input, total_steps, steps_per_epoch):
    """Load, fit and build on small_mlp; only RecipeError may stop it; a built run is exact and finite."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gsparse.RecipeWarning)
            recipe = load_recipe(recipe_input)
            fitted = recipe.fit_to_run(total_steps, steps_per_epoch)
            model = small_mlp()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            sparsifier = gsparse.Sparsifier(model, optimizer, recipe, total_steps=total_steps,
                                            steps_per_epoch=steps_per_epoch)
    except RecipeError as error:
        assert str(error).startswith("recipe key '")
        return None
    assert fitted.run_relative_keys() == []
    shapes = {spec.name: tuple(spec.shape) for spec in sparsifier.specs}
    custom = {name: value for name, value in fitted.layer_sparsity.items() if name in shapes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gsparse.RecipeWarning)
        expected = active_counts(shapes, layer_densities(shapes, fitted.sparsity, fitted.distribution, custom,
                                                         fitted.erk_power_scale))
    assert {spec.name: spec.active_count for spec in sparsifier.specs} == expected
    starts_at_recipe_counts = type(sparsifier.engine.method).initial_change is SparseMethod.initial_change
    for spec, layer in zip(sparsifier.specs, sparsifier.engine.layers):
        active = int(sparsifier.masks[spec.name].sum())
        assert active == layer.active and 0 <= active <= spec.numel
        if starts_at_recipe_counts:
            assert active == expected[spec.name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gsparse.RecipeWarning)
        loss = train_step(model, optimizer, 1)
    assert math.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return sparsifier


@settings(PROPERTY, max_examples=150)
@given(recipe=recipe_dicts(), total_steps=st.integers(1, 40), steps_per_epoch=st.integers(1, 12))
def test_any_recipe_dict_builds_a_finite_exact_run_or_raises_one_recipe_error(recipe, total_steps, steps_per_epoch):
    check_recipe_end_to_end(recipe, total_steps, steps_per_epoch)


yaml_lines = st.one_of(
    st.sampled_from(["method: rigl", "method: set", "method: gmp", "sparsity: 0.8", "sparsity: .nan",
                     "sparsity: 1", "distribution: erk", "erk_power_scale: 1e300", "schedule:",
                     "  update_interval: 3", "  update_interval: '5%'", "  last_update_step: 50%",
                     "  drop_fraction: -1", "method_args: {}", "method_args:", "  c: 0.1", "  junk: 1",
                     "seed: -1", "- 1", "[", "{a: 1", "&a x: 1", "*b", "? [1, 2]\n: 3", "sparsity: [0.5]",
                     "'': 1", "1: 2", "\t", "---", "method: rigl  # twice",
                     "sparsity: 1" + "0" * 400]),
    st.text(alphabet="ab:- \n'\"%{}[]#&*!|>", max_size=15))


@settings(PROPERTY, max_examples=100)
@given(inserts=st.lists(st.tuples(st.integers(0, 4), yaml_lines), max_size=3), total_steps=st.integers(1, 30))
def test_any_yaml_text_builds_a_run_or_raises_one_recipe_error(inserts, total_steps):
    lines = ["method: set", "sparsity: 0.5", "schedule:", "  update_interval: 3"]
    for position, line in inserts:  # a valid recipe with random lines (duplicates, junk, bad YAML) put in
        lines.insert(position, line)
    text = "\n".join(lines) + "\n"  # a newline: always read as inline YAML, never as a file name
    check_recipe_end_to_end(text, total_steps, 5)


def test_a_valid_generated_recipe_builds_with_the_distribution_counts():
    # the property's success branch is reachable: uniform 0.5 on 576 + 1536 + 128 weights
    sparsifier = check_recipe_end_to_end({"method": "set", "sparsity": 0.5, "schedule": {"update_interval": "10%"}},
                                         20, 5)
    assert [int(mask.sum()) for mask in sparsifier.masks.values()] == [288, 768, 64]


# ---- 2. DeepSpeed configs -----------------------------------------------------------------------------

DS_KEYS = ["zero_optimization", "stage", "offload_optimizer", "offload_param", "device", "bf16", "fp16", "enabled",
           "optimizer", "params", "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu",
           "gradient_accumulation_steps", "aio", "junk"]
ds_leaves = st.one_of(st.integers(-2, 70), st.just(10 ** 400), st.booleans(), st.none(), st.sampled_from(["cpu", "none", "64", ""]),
                      st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(0, 3), max_size=2))
ds_configs = st.recursive(ds_leaves, lambda inner: st.dictionaries(st.sampled_from(DS_KEYS), inner, max_size=4),
                          max_leaves=10)


def check_deepspeed_config(config_input, batch_size, world_size, accumulation):
    try:
        config = load_deepspeed_config(config_input)
    except DeepSpeedConfigError:
        return
    assert isinstance(config, dict)
    try:
        fitted, steps = deepspeed_config_for(config, batch_size, world_size, accumulation)
    except ValueError as error:  # DeepSpeedConfigError, or the documented batch divisibility ValueError
        assert isinstance(error, DeepSpeedConfigError) or "is not divisible by" in str(error)
        return
    assert steps >= 1 and fitted["gradient_accumulation_steps"] == steps
    if batch_size is not None:
        assert fitted["train_micro_batch_size_per_gpu"] * world_size * steps == batch_size


@settings(PROPERTY, max_examples=300)
@given(config=ds_configs, batch_size=st.one_of(st.none(), st.integers(1, 64)), world_size=st.integers(1, 4),
       accumulation=st.one_of(st.none(), st.integers(1, 4)), as_file=st.booleans())
def test_any_deepspeed_config_gives_a_dict_or_one_config_error(tmp_path, config, batch_size, world_size,
                                                               accumulation, as_file):
    if as_file:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(config))
        config = path
    check_deepspeed_config(config, batch_size, world_size, accumulation)


@settings(PROPERTY, max_examples=150)
@given(text=st.one_of(st.text(alphabet='{}[]":,0123456789 truefalsn\n', max_size=40),
                      st.lists(st.sampled_from(['"bf16": {"enabled": true}', '"bf16": true', '"stage": 2',
                                                '"zero_optimization": {"stage": 3}', '"train_batch_size": 8',
                                                '"gradient_accumulation_steps": 0', '"fp16": {}']),
                               max_size=4).map(lambda items: "{" + ", ".join(items) + "}")))
def test_any_json_text_gives_a_dict_or_one_config_error(tmp_path, text):
    path = tmp_path / "ds.json"
    path.write_text(text)
    check_deepspeed_config(path, 16, 2, None)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_a_deeply_nested_json_config_is_one_config_error(tmp_path, text):
    path = tmp_path / "ds.json"
    path.write_text(text)
    with pytest.raises(DeepSpeedConfigError, match=f"DeepSpeed config {path}: nested too deeply"):
        load_deepspeed_config(path)


def test_a_config_string_too_long_for_a_path_is_no_such_file():
    with pytest.raises(DeepSpeedConfigError, match="no such file"):
        load_deepspeed_config("a" * 5000)


def test_deep_yaml_and_huge_integers_in_a_recipe_are_recipe_errors():
    with pytest.raises(RecipeError, match="<inline YAML>: nested too deeply"):
        load_recipe("method: set\nseed: " + "[" * 5000 + "\n")
    with pytest.raises(RecipeError, match=r"recipe key 'sparsity': expected a number in \[0.0, 1.0\), got 1000"):
        load_recipe("method: set\nsparsity: 1" + "0" * 400 + "\n")


# ---- 3. edge-list files -------------------------------------------------------------------------------

tokens = st.one_of(st.integers(-2, 30).map(str), st.sampled_from(["1.5", "2e3", "nan", "inf", "-0", "1e400",
                                                                  "99999999999999999999", "x", "src", "dst",
                                                                  "time", "0x1", "1,2", ""]))
data_lines = st.builds(lambda fields, sep: sep.join(fields), st.lists(tokens, min_size=2, max_size=5),
                       st.sampled_from([" ", "\t", ",", " , "]))
other_lines = st.sampled_from(["# comment", "% comment", "% sym unweighted", "src dst time", "src,dst,time",
                               "%%MatrixMarket matrix coordinate real general", "3 3 2", "5 4", "", "   "])


@st.composite
def edge_files(draw):
    """Lines of one width (3 or 4 numeric fields, one separator) after an optional header, with up to 2
    random lines (junk fields, comments, headers, size lines) put in."""
    width, separator = draw(st.sampled_from([3, 4])), draw(st.sampled_from([" ", "\t", ","]))
    ids, times = st.integers(0, 9).map(str), st.one_of(st.integers(0, 99).map(str), st.sampled_from(["1.5", "2e3"]))
    lines = [separator.join([draw(ids), draw(ids)] + [draw(times) for _ in range(width - 2)])
             for _ in range(draw(st.integers(1, 5)))]
    lines = draw(st.sampled_from([[], ["# c"], ["% c"], ["src dst time"], ["src,dst,time"]])) + lines
    for position, line in draw(st.lists(st.tuples(st.integers(0, 6), st.one_of(data_lines, other_lines)),
                                        max_size=2)):
        lines.insert(position, line)
    return lines


konect_files = st.builds(lambda nodes, edges, rows: [f"{nodes} {edges}"] + [" ".join(map(str, row)) for row in rows],
                         st.integers(0, 6), st.integers(0, 5),
                         st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(-1, 1),
                                            st.integers(0, 99)), max_size=5))


def check_edge_file(path, format):
    try:
        edges = load_edges(path, format=format)
    except (GraphFormatError, DatasetError, ValueError) as error:
        assert str(path) in str(error), error
        return
    assert isinstance(edges, TemporalEdges)
    assert edges.src.dtype == edges.dst.dtype == np.int64
    assert len(edges.src) == len(edges.dst) == len(edges.time)
    assert ((edges.src >= 0) & (edges.src < edges.num_nodes)).all()
    assert ((edges.dst >= 0) & (edges.dst < edges.num_nodes)).all()
    assert np.isfinite(edges.time).all()
    if edges.weight is not None:
        assert len(edges.weight) == len(edges.src) and np.isfinite(edges.weight).all()


@settings(PROPERTY, max_examples=120)
@given(lines=st.one_of(edge_files(), konect_files), compressed=st.booleans())
@pytest.mark.parametrize("format", ["auto", *FORMATS])
def test_any_edge_file_loads_valid_edges_or_one_error_naming_the_file(tmp_path, lines, compressed, format):
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "edges.txt"
    path.write_bytes(gzip.compress(data) if compressed else data)
    check_edge_file(path, format)
