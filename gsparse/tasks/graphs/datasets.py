"""Dataset cards: where each known temporal graph comes from, where its file goes, and what it holds.

The cards are the YAML files in the repository's ``graphs/`` folder, which the package links to as
``gsparse/tasks/graphs/cards/`` and ships as package data (see ``graphs/README.md``). Data files live in the data folder:
the ``data_dir`` argument, else the ``GSPARSE_DATA`` environment variable, else ``graphs/data/`` of
the source checkout the package runs from, else ``~/.cache/gsparse/graphs``. A card may name a
``bundled`` file (relative to the card, shipped with the package: ``cards/samples/``) that is used
when the data folder holds no copy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import yaml

from gsparse.tasks.graphs.io import FORMAT_ALIASES, FORMATS, TemporalEdges, load_edges

CARDS_DIR = Path(__file__).resolve().parent / "cards"  # package data: found wherever gsparse is installed


def _default_data_dir() -> Path:
    """``graphs/data/`` of a source checkout (an editable install), else a per-user cache folder."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "graphs").is_dir():
        return checkout / "graphs" / "data"
    return Path.home() / ".cache" / "gsparse" / "graphs"


DEFAULT_DATA_DIR = _default_data_dir()
DATA_DIR_ENV = "GSPARSE_DATA"

_REQUIRED_KEYS = {"name": str, "description": str, "source_url": str, "download_url": str, "citation": str,
                  "file": str, "format": str, "num_nodes": int, "num_edges": int, "directed": bool,
                  "obtain": str}
_OPTIONAL_KEYS = {"bundled": str, "alternate_files": list}


class DatasetError(Exception):
    """A dataset is unknown, its file is missing, or the file does not hold what its card says."""


@dataclass(frozen=True)
class DatasetCard:
    """One ``cards/<name>.yaml`` card."""

    name: str
    description: str
    source_url: str
    download_url: str
    citation: str
    file: str
    format: str
    num_nodes: int
    num_edges: int
    directed: bool
    obtain: str
    card_path: Path
    bundled: str | None = None
    alternate_files: tuple[str, ...] = ()

    def candidate_paths(self, data_dir: str | os.PathLike | None = None) -> list[Path]:
        """Where the file is looked for, in order."""
        folder = resolve_data_dir(data_dir)
        paths = [folder / name for name in (self.file, *self.alternate_files)]
        if self.bundled:
            paths.append(self.card_path.parent / self.bundled)
        return paths

    def locate(self, data_dir: str | os.PathLike | None = None) -> Path:
        """The dataset's file, or a DatasetError saying which file to put where and where to get it."""
        for path in self.candidate_paths(data_dir):
            if path.is_file():
                return path
        folder = resolve_data_dir(data_dir)
        raise DatasetError(
            f"dataset '{self.name}' needs the file {folder / self.file}, which does not exist. "
            f"Get it from {self.download_url} (see {self.source_url}): {self.obtain} "
            f"To use another folder, set {DATA_DIR_ENV} or pass data_dir=.")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: the argument, else ``$GSPARSE_DATA``, else :data:`DEFAULT_DATA_DIR`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_DIR_ENV)
    return Path(from_env).expanduser() if from_env else DEFAULT_DATA_DIR


def read_card(path: str | os.PathLike) -> DatasetCard:
    """Read and check one YAML card."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DatasetError(f"dataset card {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise DatasetError(f"dataset card {path} must be a mapping of keys to values")
    _check_card_values(path, values)
    alternates = tuple(values.pop("alternate_files", ()))
    return DatasetCard(**values, alternate_files=alternates, card_path=path)


def _check_card_values(path: Path, values: dict) -> None:
    unknown = sorted(set(values) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise DatasetError(f"dataset card {path}: unknown keys {unknown}")
    missing = sorted(set(_REQUIRED_KEYS) - set(values))
    if missing:
        raise DatasetError(f"dataset card {path}: missing keys {missing}")
    for key, kind in {**_REQUIRED_KEYS, **_OPTIONAL_KEYS}.items():
        # bool is an int in Python; a count written as `true` is still a mistake.
        if key in values and (not isinstance(values[key], kind) or (kind is int and isinstance(values[key], bool))):
            raise DatasetError(f"dataset card {path}: '{key}' must be of type {kind.__name__}, got {values[key]!r}")
    if values["format"] not in FORMATS + tuple(FORMAT_ALIASES):
        raise DatasetError(f"dataset card {path}: format must be one of {FORMATS + tuple(FORMAT_ALIASES)}, "
                           f"got {values['format']!r}")
    if values["name"] != path.stem:
        raise DatasetError(f"dataset card {path}: name '{values['name']}' must match the file name '{path.stem}'")


@lru_cache(maxsize=None)
def _cards() -> dict[str, DatasetCard]:
    return {card.name: card for card in map(read_card, sorted(CARDS_DIR.glob("*.yaml")))}


def list_datasets() -> list[str]:
    """Names of the known datasets, sorted."""
    return sorted(_cards())


def dataset_card(name: str) -> DatasetCard:
    """The card of a known dataset."""
    cards = _cards()
    if name not in cards:
        raise DatasetError(f"unknown dataset '{name}'; known datasets (cards in {CARDS_DIR}): "
                           f"{', '.join(sorted(cards)) or 'none'}")
    return cards[name]


def check_dataset_counts(card: DatasetCard, edges: TemporalEdges) -> None:
    """Raise a DatasetError unless ``edges`` has the card's edge count and ``max_id + 1`` node count."""
    max_id_plus_one = int(edges.node_ids.max()) + 1 if edges.node_ids is not None else edges.num_nodes
    if len(edges) == card.num_edges and max_id_plus_one == card.num_nodes:
        return
    raise DatasetError(
        f"dataset '{card.name}' ({edges.source}): expected {card.num_edges:,} edges and {card.num_nodes:,} "
        f"nodes (max id + 1), found {len(edges):,} edges and {max_id_plus_one:,} nodes. The file is likely "
        f"truncated, partial or another version; download it again from {card.download_url}.")


def load_dataset(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 remap: bool = False, check_counts: bool = True, format: str = "auto",
                 columns: Mapping[str, str] | None = None) -> TemporalEdges:
    """Load a known dataset by name (checking its counts against the card), or any graph file by path.

    ``format`` and ``columns`` are those of :func:`load_edges` and apply to a path; a known dataset is
    read in its card's format.
    """
    cards = _cards()
    if isinstance(name_or_path, str) and name_or_path in cards:
        card = cards[name_or_path]
        canonical = FORMAT_ALIASES.get(format, format)
        if columns is not None or canonical not in ("auto", FORMAT_ALIASES.get(card.format, card.format)):
            raise ValueError(f"dataset '{card.name}' is read in its card's format ({card.format}); "
                             f"format= and columns= apply to a file path")
        edges = load_edges(card.locate(data_dir), format=card.format, remap=remap)
        if check_counts:
            check_dataset_counts(card, edges)  # counts max id + 1 of the original ids, remapped or not
        return edges
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise DatasetError(f"'{name_or_path}' is neither a known dataset ({', '.join(sorted(cards))}) "
                           f"nor an existing file")
    return load_edges(path, format=format, remap=remap, columns=columns)
