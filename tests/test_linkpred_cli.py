"""The link-prediction command line: every option documented with its default and allowed values;
bad values refused before any data is read."""
import argparse

import pytest

from gsparse.tasks.linkpred.cli import build_parser
from gsparse.tasks.linkpred.train import CHOICES, LinkPredConfig
from gsparse.tasks.vision.cli import build_parser as build_vision_parser
from gsparse.training.cli import add_config_arguments


@pytest.mark.parametrize("build", [build_parser, build_vision_parser])
def test_every_option_has_a_description_and_a_default(build):
    parser = build()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 15, action.dest
        if action.dest != "sparsity":
            assert "default" in action.help, action.dest
    text = parser.format_help()
    assert "one of:" in text


def test_allowed_values_are_listed_for_every_choice():
    text = " ".join(build_parser().format_help().split())
    for key, allowed in CHOICES.items():
        assert f"one of: {', '.join(allowed)}" in text.replace("- ", "-"), key


def test_a_field_without_help_is_a_programming_error():
    with pytest.raises(ValueError, match="no help text for"):
        add_config_arguments(argparse.ArgumentParser(), LinkPredConfig, {"dataset": "x"}, skip=("extra",))


@pytest.mark.parametrize("values, message", [
    ({"protocol": "weekly"}, "protocol: 'weekly' is not one of: chronological, paper, random"),
    ({"negatives": "hard"}, "negatives: 'hard' is not one of: random, historical"),
    ({"encoder": "mpnn"}, "encoder: 'mpnn' is not one of: sage"),
    ({"format": "xml"}, "format: 'xml' is not one of: auto, snap"),
    ({"train_windows": 1}, "train_windows"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction must be < 1"),
    ({"protocol": "paper", "negatives": "historical"}, "supports only negatives=random"),
    ({"columns": "source:a"}, "columns: expected 'src=NAME"),
    ({"threads": 0}, "threads: expected a positive integer"),
])
def test_bad_values_are_refused_with_the_key_and_allowed_values(values, message):
    with pytest.raises(ValueError, match=message):
        LinkPredConfig(**values)


def test_columns_parse_to_a_role_map():
    assert LinkPredConfig(columns="src=from, dst=to,time=when").column_map() == {"src": "from", "dst": "to",
                                                                                   "time": "when"}
