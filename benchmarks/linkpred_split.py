"""Time of the temporal link-prediction split with all negatives, at wiki-talk size.

Run:  python benchmarks/linkpred_split.py [--edges N] [--nodes N] [--seed S]
Prints one JSON object. The graph is synthetic: 7,833,140 edges on 1,140,149 nodes (wiki-talk),
skewed degrees (ids ~ N * u**3, relabelled at random), increasing timestamps, and ~15% of the
edges repeating an earlier (src, dst) pair. Peak RSS (ru_maxrss) covers the whole process,
edge arrays included.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np

from gsparse.tasks.linkpred.split import pair_keys, sorted_unique, temporal_split

WIKI_TALK_EDGES = 7_833_140
WIKI_TALK_NODES = 1_140_149
REPEATED_SHARE = 0.15


def skewed_node_ids(rng: np.random.Generator, count: int, num_nodes: int, relabel: np.ndarray) -> np.ndarray:
    """Node ids with a heavy-tailed frequency: the busiest node gets ~1% of the edges."""
    ranks = (num_nodes * rng.random(count) ** 3).astype(np.int64)
    return relabel[ranks]


def synthetic_temporal_graph(num_edges: int, num_nodes: int, seed: int):
    rng = np.random.default_rng(seed)
    src = skewed_node_ids(rng, num_edges, num_nodes, rng.permutation(num_nodes))
    dst = skewed_node_ids(rng, num_edges, num_nodes, rng.permutation(num_nodes))
    # A share of the edges repeats a uniformly chosen earlier original edge, as repeated messages do.
    is_repeat = rng.random(num_edges) < REPEATED_SHARE
    is_repeat[0] = False
    repeats, originals = np.flatnonzero(is_repeat), np.flatnonzero(~is_repeat)
    originals_before = np.searchsorted(originals, repeats)
    earlier = originals[(rng.random(len(repeats)) * originals_before).astype(np.int64)]
    src[repeats], dst[repeats] = src[earlier], dst[earlier]
    timestamps = 1_000_000_000 + np.cumsum(rng.integers(0, 3, size=num_edges))  # increasing, with ties
    return src, dst, timestamps


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=WIKI_TALK_EDGES)
    parser.add_argument("--nodes", type=int, default=WIKI_TALK_NODES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    src, dst, timestamps = synthetic_temporal_graph(args.edges, args.nodes, args.seed)
    generate_s = time.perf_counter() - start
    rss_after_graph = max_rss_gib()
    distinct_pairs = len(sorted_unique(pair_keys(src, dst, args.nodes)))

    results = {}
    for exclude in (True, False):
        start = time.perf_counter()
        split = temporal_split(src, dst, timestamps, args.nodes, seed=args.seed, exclude_test_pairs_from_train=exclude)
        results["exclude_test_pairs" if exclude else "reference_protocol"] = {
            "seconds": round(time.perf_counter() - start, 3),
            "sizes": {part: len(getattr(split, f"{part}_pos")) for part in ("train", "val", "test")},
        }
        del split

    print(json.dumps({
        "edges": args.edges,
        "nodes": args.nodes,
        "repeated_edge_share": round(1 - distinct_pairs / args.edges, 4),
        "max_out_degree": int(np.bincount(src, minlength=args.nodes).max()),
        "generate_seconds": round(generate_s, 3),
        "temporal_split_with_negatives": results,
        "peak_rss_gib_after_graph": round(rss_after_graph, 3),
        "peak_rss_gib": round(max_rss_gib(), 3),
        "numpy": np.__version__,
        "cpus": __import__("os").cpu_count(),
        "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
