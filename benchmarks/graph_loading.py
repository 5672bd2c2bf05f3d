"""Time and memory of ``load_edges`` on a synthetic SNAP file the size of wiki-talk-temporal.

Run:  python benchmarks/graph_loading.py [--lines N] [--gzip] [--remap]
Writes ``src dst ts`` lines (ids up to 1,140,148, increasing timestamps) into a temporary folder,
then loads the file in a fresh Python process, so that the peak RSS measures the load alone.
Prints one JSON object; ``peak_rss_mib`` is the peak RSS during the load minus the RSS before it
(Linux: the peak is reset through /proc/self/clear_refs), ``result_mib`` the size of the loaded arrays.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIKI_TALK_LINES = 7_833_140
WIKI_TALK_MAX_ID = 1_140_148
FIRST_TIMESTAMP = 1_004_000_000
CHUNK_LINES = 1_000_000


def synthetic_columns(lines: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, WIKI_TALK_MAX_ID + 1, lines)
    dst = rng.integers(0, WIKI_TALK_MAX_ID + 1, lines)
    src[0] = WIKI_TALK_MAX_ID  # so that num_nodes is exactly wiki-talk's
    time_ = FIRST_TIMESTAMP + np.cumsum(rng.integers(0, 50, lines))
    return src, dst, time_


def format_lines(columns: list[np.ndarray]) -> bytes:
    """``a b c\\n`` lines of non-negative integers, built with array operations (np.savetxt is ~10x slower)."""
    chars, keep = [], []
    for k, column in enumerate(columns):
        width = len(str(int(column.max())))
        powers = 10 ** np.arange(width - 1, -1, -1)
        chars.append((b"0"[0] + column[:, None] // powers % 10).astype(np.uint8))
        keep.append((column[:, None] >= powers) | (powers == 1))  # drop leading zeros
        separator = b"\n" if k == len(columns) - 1 else b" "
        chars.append(np.full((len(column), 1), separator[0], dtype=np.uint8))
        keep.append(np.ones((len(column), 1), dtype=bool))
    return np.hstack(chars)[np.hstack(keep)].tobytes()


def write_snap_file(path: Path, lines: int) -> None:
    columns = synthetic_columns(lines)
    with open(path, "wb") as handle:
        for start in range(0, lines, CHUNK_LINES):
            handle.write(format_lines([column[start:start + CHUNK_LINES] for column in columns]))


def memory_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset the peak RSS to the current RSS (importing torch via gsparse leaves a higher transient peak)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return memory_mib("VmRSS")


def measure_load(path: str, remap: bool, split: bool = False) -> dict:
    """Run in a fresh process: load once and report time and the rise of the peak RSS."""
    from gsparse.tasks.graphs import load_edges, remap_nodes

    rss_before = reset_peak_rss()
    start = time.perf_counter()
    edges = load_edges(path)
    result = {"load_seconds": round(time.perf_counter() - start, 3),
              "peak_rss_mib": round(memory_mib("VmHWM") - rss_before, 1),
              "result_mib": round(sum(a.nbytes for a in (edges.src, edges.dst, edges.time)) / 2 ** 20, 1),
              "loaded_edges": len(edges), "num_nodes": edges.num_nodes}
    if remap:
        start = time.perf_counter()
        remapped = remap_nodes(edges)
        result["remap_seconds"] = round(time.perf_counter() - start, 3)
        result["remapped_num_nodes"] = remapped.num_nodes
        result["peak_rss_mib_with_remap"] = round(memory_mib("VmHWM") - rss_before, 1)
    if split:
        from gsparse.tasks.linkpred.split import temporal_split

        start = time.perf_counter()
        parts = temporal_split(edges.src, edges.dst, edges.time, edges.num_nodes, seed=0)
        result["split_and_negatives_seconds"] = round(time.perf_counter() - start, 3)
        result["train_val_test_positives"] = [len(parts.train_pos), len(parts.val_pos), len(parts.test_pos)]
        result["peak_rss_mib_load_split_negatives"] = round(memory_mib("VmHWM") - rss_before, 1)
    return result


def measure_in_subprocess(path: Path, remap: bool, split: bool = False) -> dict:
    command = [sys.executable, __file__, "--measure", str(path)] + (["--remap"] if remap else []) \
        + (["--split"] if split else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=WIKI_TALK_LINES)
    parser.add_argument("--gzip", action="store_true", help="also time a gzip-compressed copy")
    parser.add_argument("--remap", action="store_true", help="also time remap_nodes")
    parser.add_argument("--split", action="store_true", help="also time the temporal split with negatives")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(args.measure, args.remap, args.split)))
        return

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic-wiki-talk.txt"
        start = time.perf_counter()
        write_snap_file(path, args.lines)
        report = {"lines": args.lines, "file_mib": round(path.stat().st_size / 2 ** 20, 1),
                  "write_seconds": round(time.perf_counter() - start, 2),
                  **measure_in_subprocess(path, args.remap, args.split)}
        if args.gzip:
            compressed = path.with_suffix(".txt.gz")
            with open(path, "rb") as source, gzip.open(compressed, "wb", compresslevel=6) as target:
                shutil.copyfileobj(source, target, 2 ** 24)
            report["gzip"] = {"file_mib": round(compressed.stat().st_size / 2 ** 20, 1),
                              **measure_in_subprocess(compressed, False)}
    report.update(python=platform.python_version(), numpy=np.__version__, cpus=_cpu_count())
    print(json.dumps(report, indent=2))


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
