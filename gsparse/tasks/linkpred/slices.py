"""Link-prediction protocols as *slices*: sets of pairs to score, each with the history it is scored from.

The default protocol, ``chronological``, predicts every slice from the edges before it. The temporal
edges, stable-sorted by time, are cut into train / validation / test slices at timestamp boundaries (no
timestamp spans two slices; by default 70 / 15 / 15 % of the edges). The training slice is cut the same
way into ``train_windows`` windows: window 0 is history only, every later window is a training slice.
Training windows, validation and test are then all built by one function, so validation tracks test:

* ``history``: every temporal edge before the slice starts - the graph the encoder passes messages
  over and the edges that the no-learning baselines and the pair features see;
* ``positives``: the distinct directed pairs of the slice in order of first occurrence (a pair repeated
  inside the slice is scored once; self loops are dropped); with ``eval_links="new"``, only the pairs
  never seen in the history (links never seen before);
* ``negatives``, one per positive, by ``negatives``:

  - ``random``: the first half keep their positive's source and draw a destination, the rest draw both
    endpoints uniformly, as PyG's ``negative_sampling`` does; never a self loop, never a pair of the
    slice or of its history;
  - ``historical`` (Poursafaei et al., NeurIPS 2022; TGB): half are pairs of the history that do not
    occur in the slice (as many as exist), the rest random as above. These punish a model that only
    remembers which pairs it has seen;

* ``ranking``: ``[n, K]`` destinations per positive for MRR (the positive's source kept), drawn with the
  same strategy: historical destinations of that source first (half), random ones otherwise.

The other protocols keep the split of :mod:`gsparse.tasks.linkpred.split` and score every slice from
the training edges: ``paper`` (the DST-EE / IISWC'21 protocol: the last 20 % of edges are test, train
and validation drawn at random from the earlier edges) and ``random`` (a uniformly random cover).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gsparse.tasks.linkpred.split import (_fraction_count, _validate_edges, contains_sorted, pair_keys,
                                          random_split, sample_negatives, sorted_unique, temporal_split)

PROTOCOLS = ("chronological", "paper", "random")
NEGATIVE_STRATEGIES = ("random", "historical")
EVAL_LINKS = ("all", "new")
MIN_EVAL_POSITIVES = 10  # a validation or test slice with fewer has no meaningful accuracy / AUC (none: NaN)


@dataclass(eq=False)
class Slice:
    """Pairs to score (positives and one negative each) and the temporal edges known before them."""

    name: str
    history: np.ndarray  # [m, 2] int64 temporal edges (repeats kept)
    positives: np.ndarray  # [n, 2] int64
    negatives: np.ndarray  # [n, 2] int64
    ranking: np.ndarray  # [n, K] int64 negative destinations per positive (MRR); K may be 0
    time_range: tuple = (None, None)  # (first, last) timestamp of the slice's edges

    def pairs_and_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Positives then negatives as ``[2n, 2]`` int64, with float32 labels 1 then 0."""
        pairs = np.concatenate([self.positives, self.negatives]).astype(np.int64, copy=False)
        labels = np.concatenate([np.ones(len(self.positives), np.float32), np.zeros(len(self.negatives), np.float32)])
        return pairs, labels

    def ranking_pairs(self) -> np.ndarray:
        """``[n * K, 2]`` pairs (source of positive i, ranking[i, k]), row-major in ``(i, k)``."""
        count, width = self.ranking.shape
        return np.stack([np.repeat(self.positives[:, 0], width), self.ranking.reshape(-1)], axis=1)


@dataclass(eq=False)
class SlicedSplit:
    """The training slices, the validation and the test slice, and how they were made (``info``)."""

    train: list[Slice]
    val: Slice
    test: Slice
    num_nodes: int
    info: dict = field(default_factory=dict)

    def eval_slice(self, name: str) -> Slice:
        if name not in ("val", "test"):
            raise ValueError(f"evaluation slice must be 'val' or 'test', got {name!r}")
        return getattr(self, name)


def make_split(src, dst, time, num_nodes: int, seed: int, protocol: str = "chronological",
               negatives: str = "random", eval_links: str = "all", val_fraction: float = 0.15,
               test_fraction: float = 0.15, train_windows: int = 4, ranking_negatives: int = 20) -> SlicedSplit:
    """The split of a temporal edge list under ``protocol`` (see the module docstring)."""
    for key, value, allowed in (("protocol", protocol, PROTOCOLS), ("negatives", negatives, NEGATIVE_STRATEGIES),
                                ("eval_links", eval_links, EVAL_LINKS)):
        if value not in allowed:
            raise ValueError(f"{key}: '{value}' is not one of: {', '.join(allowed)}")
    if protocol == "chronological":
        return chronological_split(src, dst, time, num_nodes, seed, negatives=negatives, eval_links=eval_links,
                                   val_fraction=val_fraction, test_fraction=test_fraction,
                                   train_windows=train_windows, ranking_negatives=ranking_negatives)
    if negatives != "random" or eval_links != "all":
        raise ValueError(f"protocol '{protocol}' scores every slice from the training edges: it supports only "
                         "negatives=random and eval_links=all (use protocol=chronological)")
    if protocol == "paper":
        split = temporal_split(src, dst, time, num_nodes, seed=seed, exclude_test_pairs_from_train=False)
    else:
        split = random_split(src, dst, num_nodes, seed=seed)
    return _from_link_split(split, protocol, seed, ranking_negatives)


def chronological_split(src, dst, time, num_nodes: int, seed: int, negatives: str = "random",
                        eval_links: str = "all", val_fraction: float = 0.15, test_fraction: float = 0.15,
                        train_windows: int = 4, ranking_negatives: int = 20) -> SlicedSplit:
    """Train / validation / test slices disjoint in time; see the module docstring."""
    src, dst = _validate_edges(src, dst, num_nodes, time)
    if time is None:
        raise ValueError("the chronological protocol needs timestamps")
    if not isinstance(train_windows, int) or train_windows < 2:
        raise ValueError(f"train_windows: expected an integer >= 2 (window 0 is history only), got {train_windows!r}")
    if val_fraction <= 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction and test_fraction must be > 0 with a sum < 1, got {val_fraction}, {test_fraction}")
    num_nodes = int(num_nodes)
    order = np.argsort(np.asarray(time), kind="stable")
    edges = np.stack([src[order], dst[order]], axis=1).astype(np.int64, copy=False)
    times = np.asarray(time)[order]
    total = len(edges)
    train_end = _time_boundary(times, total - _fraction_count(test_fraction, total) - _fraction_count(val_fraction, total))
    val_end = _time_boundary(times, total - _fraction_count(test_fraction, total))
    window_ends = [_time_boundary(times, round(train_end * k / train_windows)) for k in range(1, train_windows)]
    bounds = [0, *window_ends, train_end, val_end, total]
    if len(set(bounds)) != len(bounds):
        raise ValueError(f"the graph is too small (or its timestamps too coarse) for {train_windows} training windows "
                         f"and validation and test slices: boundaries at edges {bounds}")

    rng = np.random.default_rng(seed)
    names = [f"train{k}" for k in range(1, train_windows)] + ["val", "test"]
    slices = []
    for name, start, end in zip(names, bounds[1:-1], bounds[2:]):
        slices.append(build_slice(name, edges[:start], edges[start:end], num_nodes, rng, negatives,
                                  new_links_only=eval_links == "new", ranking_negatives=ranking_negatives,
                                  time_range=(times[start].item(), times[end - 1].item())))
        if name in ("val", "test"):
            fraction = val_fraction if name == "val" else test_fraction
            _require_positives(name, len(slices[-1].positives), end - start,
                               f"a larger graph or a larger {name}_fraction (now {fraction})"
                               + (", or eval_links=all" if eval_links == "new" else ""))
    info = {"protocol": "chronological", "seed": seed, "negatives": negatives, "eval_links": eval_links,
            "val_fraction": val_fraction, "test_fraction": test_fraction, "train_windows": train_windows,
            "ranking_negatives": ranking_negatives, "slice_edges": bounds,
            "slice_times": {s.name: list(s.time_range) for s in slices},
            "positives": {s.name: len(s.positives) for s in slices}}
    return SlicedSplit(train=slices[:-2], val=slices[-2], test=slices[-1], num_nodes=num_nodes, info=info)


def _require_positives(name: str, positives: int, edges: int | None, remedy: str) -> None:
    """Refuse an evaluation slice with fewer than :data:`MIN_EVAL_POSITIVES` pairs to score."""
    if positives < MIN_EVAL_POSITIVES:
        source = "" if edges is None else f" (from {edges} edge(s))"
        raise ValueError(f"slice '{name}' has {positives} pair(s) to score{source}; at least {MIN_EVAL_POSITIVES} "
                         f"are needed for its metrics: use {remedy}")


def _time_boundary(times: np.ndarray, position: int) -> int:
    """The first index >= ``position`` where a new timestamp starts (so no timestamp spans two slices)."""
    position = min(max(position, 0), len(times))
    if position in (0, len(times)):
        return position
    return int(np.searchsorted(times, times[position - 1], side="right"))


def build_slice(name: str, history: np.ndarray, events: np.ndarray, num_nodes: int, rng: np.random.Generator,
                negatives: str = "random", new_links_only: bool = False, ranking_negatives: int = 0,
                time_range: tuple = (None, None)) -> Slice:
    """One slice: the distinct pairs of ``events`` scored from ``history`` (both ``[m, 2]`` int64)."""
    history_keys = sorted_unique(pair_keys(history[:, 0], history[:, 1], num_nodes))
    event_keys = pair_keys(events[:, 0], events[:, 1], num_nodes)
    _, first = np.unique(event_keys, return_index=True)
    keep = np.sort(first)
    keep = keep[events[keep, 0] != events[keep, 1]]
    if new_links_only:
        keep = keep[~contains_sorted(history_keys, event_keys[keep])]
    positives = events[keep]
    slice_keys = sorted_unique(event_keys)
    known = sorted_unique(np.concatenate([history_keys, slice_keys]))
    if len(positives) == 0:
        raise ValueError(f"slice '{name}' has no pairs to score (every pair was seen before, or the slice is empty)")
    historical = None
    if negatives == "historical":
        historical = history_keys[~contains_sorted(slice_keys, history_keys)]
        historical = historical[historical // num_nodes != historical % num_nodes]  # no self loops
    pair_negatives = _pair_negatives(positives, known, historical, num_nodes, rng)
    ranking = _ranking_negatives(positives, known, historical, num_nodes, ranking_negatives, rng)
    return Slice(name=name, history=history, positives=positives, negatives=pair_negatives, ranking=ranking,
                 time_range=time_range)


def _pair_negatives(positives, known_keys, historical_keys, num_nodes, rng) -> np.ndarray:
    drawn = sample_negatives(positives, known_keys, num_nodes, rng)
    if historical_keys is None or len(historical_keys) == 0:
        return drawn
    count = min(len(positives) // 2, len(historical_keys))
    chosen = historical_keys[rng.choice(len(historical_keys), size=count, replace=False)]
    # The historical pairs replace the second half's rows (those that corrupt both endpoints).
    rows = np.arange(len(positives) - count, len(positives))
    drawn[rows, 0], drawn[rows, 1] = chosen // num_nodes, chosen % num_nodes
    return drawn


def _ranking_negatives(positives, known_keys, historical_keys, num_nodes, width, rng) -> np.ndarray:
    """``[n, width]`` destinations: ``(source_i, d)`` is never a known pair or a self loop; with
    historical keys, the first ``width // 2`` of a row are that source's past destinations where it has any."""
    count = len(positives)
    if width == 0:
        return np.zeros((count, 0), dtype=np.int64)
    sources = np.repeat(positives[:, 0], width)
    kept_source = np.stack([sources, np.zeros_like(sources)], axis=1)
    destinations = sample_negatives(kept_source, known_keys, num_nodes, rng, keep_source=np.ones(len(sources), bool))[:, 1]
    destinations = destinations.reshape(count, width)
    if historical_keys is not None and len(historical_keys):
        lows = np.searchsorted(historical_keys, positives[:, 0] * num_nodes)
        highs = np.searchsorted(historical_keys, (positives[:, 0] + 1) * num_nodes)
        available = highs - lows
        half = width // 2
        offsets = np.floor(rng.random((count, half)) * available[:, None]).astype(np.int64)
        picked = historical_keys[np.minimum(lows[:, None] + offsets, len(historical_keys) - 1)] % num_nodes
        has_history = (available > 0)[:, None]
        destinations[:, :half] = np.where(has_history, picked, destinations[:, :half])
    return destinations


def _from_link_split(split, protocol: str, seed: int, ranking_width: int) -> SlicedSplit:
    """The ``paper`` and ``random`` protocols: every slice scored from the training positives."""
    num_nodes = split.num_nodes
    for name in ("test", "val"):
        _require_positives(name, len(getattr(split, f"{name}_pos")), None, f"a larger graph (protocol '{protocol}')")
    everything = np.concatenate([split.train_pos, split.val_pos, split.test_pos])
    known = sorted_unique(pair_keys(everything[:, 0], everything[:, 1], num_nodes))
    rng = np.random.default_rng([seed, 1])
    history = split.train_pos
    slices = {name: Slice(name=name, history=history, positives=getattr(split, f"{part}_pos"),
                          negatives=getattr(split, f"{part}_neg"),
                          ranking=_ranking_negatives(getattr(split, f"{part}_pos"), known, None, num_nodes,
                                                     ranking_width, rng))
              for name, part in (("train1", "train"), ("val", "val"), ("test", "test"))}
    info = {"protocol": protocol, "seed": seed, "negatives": "random", "eval_links": "all",
            "ranking_negatives": ranking_width, "positives": {name: len(s.positives) for name, s in slices.items()}}
    return SlicedSplit(train=[slices["train1"]], val=slices["val"], test=slices["test"], num_nodes=num_nodes, info=info)
