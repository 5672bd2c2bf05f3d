"""Loaders for temporal edge lists: SNAP text, Network Repository ``.edges``, KONECT ``out.*`` and Matrix Market.

Rules shared by every format:

* any file may be gzip compressed (detected from its first bytes, whatever its name);
* fields are separated by whitespace (spaces or tabs; ``.edges`` files may use commas instead);
* comment lines may appear anywhere and text after a comment character is ignored; blank lines are ignored;
* repeated edges and self loops are kept, in file order: a temporal graph records every event;
* node ids are kept as in the file (``num_nodes = max_id + 1``, as the DST-EE paper counts) unless
  ``remap=True``, which maps the distinct ids, **in sorted order**, to ``0..n-1`` and records the
  original id of each new id in ``node_ids``;
* ``time`` (and ``weight``) are int64 when every value is a whole number, float64 otherwise;
* anything else that is not an edge line is an error: one :class:`GraphFormatError` naming the file,
  the 1-based line number (comment and header lines counted) and the offending line.

Formats (``format="auto"`` picks one by name, ignoring a ``.gz`` suffix: ``*.mtx`` -> ``mtx``,
``*.edges`` -> ``edges``, ``out.*`` -> ``konect``, anything else -> ``snap``):

``snap``
    ``src dst ts`` lines, ``#`` comments, and optionally one header line before the data (the first
    non-comment line when none of its fields is a number, e.g. ``src dst time``).
``edges``
    ``src dst ts`` or ``src dst weight ts`` (every line with the same count), ``%`` and ``#`` comments,
    optionally one header line like ``snap``.
``konect``
    ``src dst weight ts``; ``%`` comments (KONECT keeps ``% sym|asym ...`` and ``% m n n`` there).
    An uncommented size line is tolerated: a first non-comment line of 2 or 3 integers followed by a
    4-column line is skipped. Lines of 3 columns (``src dst weight``) carry no timestamps: an error.
``mtx``
    Matrix Market ``coordinate`` files: the banner ``%%MatrixMarket matrix coordinate <field>
    <symmetry>``, ``%`` comments, a size line ``rows cols nnz``, then ``i j value`` entries. For a
    temporal graph the value column is the timestamp. Ids are 1-based and must lie within the size
    line; the number of entries must equal ``nnz``; symmetric entries are returned as stored (not
    mirrored); a ``pattern`` field has no values and hence no timestamps: an error.

Parsing is vectorized (``np.loadtxt``, one pass for a clean file); only when it fails, or the parsed
values break a rule, is the file rescanned line by line to report the first bad line.
"""
from __future__ import annotations

import gzip
import os
import re
import warnings
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Iterator

import numpy as np

FORMATS = ("snap", "edges", "konect", "mtx")

_INT = re.compile(rb"[+-]?[0-9]+\Z")
_FLOAT = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_HEADER_SEPARATORS = re.compile(rb"[\s,]+")
_INT64_MAX = np.iinfo(np.int64).max
_FLOAT_EXACT_INT = 2 ** 53  # float64 holds every integer up to this exactly
_SHOWN_LINE_CHARS = 200


class GraphFormatError(ValueError):
    """A graph file breaks its format; the message names the file, the line number and the line."""

    def __init__(self, path: str | os.PathLike, problem: str, line_number: int | None = None,
                 line: bytes | None = None):
        self.path = str(path)
        self.problem = problem
        self.line_number = line_number
        self.line = None if line is None else _shown(line)
        where = self.path if line_number is None else f"{self.path}, line {line_number}"
        text = "" if line is None else f": {self.line!r}"
        super().__init__(f"{where}: {problem}{text}")


@dataclass(eq=False)  # element-wise array comparison has no single truth value
class TemporalEdges:
    """Temporal edges ``src -> dst`` at ``time``, in file order."""

    src: np.ndarray
    dst: np.ndarray
    time: np.ndarray
    weight: np.ndarray | None
    num_nodes: int
    node_ids: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class _Layout:
    """What a format allows: comment characters, column names by count, an optional header line."""

    name: str
    comments: tuple[str, ...]
    columns: dict[int, tuple[str, ...]]
    header_allowed: bool = False
    commas_allowed: bool = False
    untimed: dict[int, tuple[str, ...]] = field(default_factory=lambda: {2: ("src", "dst")})


_LAYOUTS = {
    "snap": _Layout("snap", ("#",), {3: ("src", "dst", "ts")}, header_allowed=True),
    "edges": _Layout("edges", ("%", "#"), {3: ("src", "dst", "ts"), 4: ("src", "dst", "weight", "ts")},
                     header_allowed=True, commas_allowed=True),
    "konect": _Layout("konect", ("%",), {4: ("src", "dst", "weight", "ts")},
                      untimed={2: ("src", "dst"), 3: ("src", "dst", "weight")}),
    "mtx": _Layout("mtx", ("%",), {3: ("src", "dst", "ts")}),
}


@dataclass(frozen=True)
class _Preamble:
    """Where the edge lines start, how they split, and the id range they must respect."""

    first_data_line: int
    columns: tuple[str, ...]
    delimiter: str | None = None
    min_id: int = 0
    max_src: int | None = None
    max_dst: int | None = None
    mtx_nnz: int | None = None
    mtx_size_line: int | None = None


def load_edges(path: str | os.PathLike, format: str = "auto", remap: bool = False) -> TemporalEdges:
    """Load a temporal edge list; see the module docstring for the formats and rules."""
    path = Path(path)
    format = detect_format(path) if format == "auto" else format
    if format not in _LAYOUTS:
        raise ValueError(f"unknown graph format {format!r}; choose one of: auto, {', '.join(FORMATS)}")
    layout = _LAYOUTS[format]
    preamble = _read_preamble(path, layout)
    columns = _read_columns(path, layout, preamble)
    if preamble.mtx_nnz is not None and len(columns["src"]) != preamble.mtx_nnz:
        raise GraphFormatError(path, f"the size line (line {preamble.mtx_size_line}) declares "
                                     f"{preamble.mtx_nnz} entries, but the file has {len(columns['src'])}")
    src, dst = columns["src"], columns["dst"]
    edges = TemporalEdges(src=src, dst=dst, time=columns["ts"], weight=columns.get("weight"),
                          num_nodes=int(max(src.max(), dst.max())) + 1, node_ids=None, source=str(path))
    return remap_nodes(edges) if remap else edges


def detect_format(path: str | os.PathLike) -> str:
    """The format ``auto`` picks from a file name (a ``.gz`` suffix is ignored)."""
    name = Path(path).name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    if name.endswith(".mtx"):
        return "mtx"
    if name.endswith(".edges"):
        return "edges"
    if name.startswith("out."):
        return "konect"
    return "snap"


def remap_nodes(edges: TemporalEdges) -> TemporalEdges:
    """Map the distinct node ids, in sorted order, to ``0..n-1``; ``node_ids[new] = original``."""
    if edges.node_ids is not None:
        return edges
    if edges.num_nodes <= 4 * len(edges.src) + 1024:
        # Dense ids: a lookup table is linear time, several times faster than sorting 2 x edges ids.
        present = np.zeros(edges.num_nodes, dtype=bool)
        present[edges.src] = True
        present[edges.dst] = True
        node_ids = np.flatnonzero(present)
        new_id_of = np.cumsum(present, dtype=np.int64) - 1
        src, dst = new_id_of[edges.src], new_id_of[edges.dst]
    else:
        node_ids, new_ids = np.unique(np.concatenate((edges.src, edges.dst)), return_inverse=True)
        src, dst = np.split(new_ids.astype(np.int64), [len(edges.src)])
    return replace(edges, src=src, dst=dst, num_nodes=len(node_ids), node_ids=node_ids.astype(np.int64))


# --- reading lines ---------------------------------------------------------------------------------

def _open(path: Path, text: bool = False) -> IO:
    """Open a plain or gzip file; text mode decodes as latin-1 so that any byte is readable."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
    except FileNotFoundError:
        raise FileNotFoundError(f"graph file not found: {path}") from None
    opener = gzip.open if compressed else open
    # newline="\n": lines end where the binary rescan ends them, so skiprows and line numbers agree.
    return opener(path, "rt", encoding="latin-1", newline="\n") if text else opener(path, "rb")


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for every line, 1-based, line endings removed."""
    with _open(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip(b"\r\n")
        except (OSError, EOFError) as error:  # corrupt or truncated gzip stream
            raise GraphFormatError(path, f"cannot be read: {error}") from None


def _content(line: bytes, comments: tuple[str, ...]) -> bytes:
    """The line without its comment part and surrounding whitespace."""
    for char in comments:
        cut = line.find(char.encode())
        if cut >= 0:
            line = line[:cut]
    return line.strip()


def _split(content: bytes, delimiter: str | None) -> list[bytes]:
    if delimiter is None:
        return content.split()
    return [item.strip() for item in content.split(delimiter.encode())]


def _shown(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    return text if len(text) <= _SHOWN_LINE_CHARS else text[:_SHOWN_LINE_CHARS] + "..."


# --- preamble: banner, comments, header or size line before the first edge line --------------------

def _read_preamble(path: Path, layout: _Layout) -> _Preamble:
    read = _read_mtx_preamble if layout.name == "mtx" else _read_text_preamble
    with closing(_numbered_lines(path)) as lines:
        return read(path, lines, layout)


def _read_text_preamble(path: Path, lines: Iterator[tuple[int, bytes]], layout: _Layout) -> _Preamble:
    data = _content_lines(lines, layout.comments)
    first = next(data, None)
    if first is not None and layout.header_allowed and _is_header(first[1]):
        first = next(data, None)
    if first is not None and layout.name == "konect":
        first = _skip_konect_size_line(first, data)
    if first is None:
        raise GraphFormatError(path, "the file has no edges")
    number, content, line = first
    delimiter = "," if layout.commas_allowed and b"," in content else None
    columns = _columns_for(path, layout, number, line, len(_split(content, delimiter)))
    return _Preamble(first_data_line=number, columns=columns, delimiter=delimiter)


def _content_lines(lines: Iterator[tuple[int, bytes]], comments: tuple[str, ...]
                   ) -> Iterator[tuple[int, bytes, bytes]]:
    """``(line_number, content, line)`` for the lines that are neither blank nor comments."""
    for number, line in lines:
        content = _content(line, comments)
        if content:
            yield number, content, line


def _is_header(content: bytes) -> bool:
    return not any(_FLOAT.match(item) for item in _HEADER_SEPARATORS.split(content))


def _skip_konect_size_line(first: tuple[int, bytes, bytes], data: Iterator[tuple[int, bytes, bytes]]
                           ) -> tuple[int, bytes, bytes]:
    """Skip an uncommented ``n m`` / ``m n n`` size line when the next line has 4 columns."""
    fields = first[1].split()
    if len(fields) in (2, 3) and all(_INT.match(item) for item in fields):
        second = next(data, None)
        if second is not None and len(second[1].split()) == 4:
            return second
        # Not a size line: the first line stays the first edge line (and is judged as such).
    return first


def _columns_for(path: Path, layout: _Layout, number: int, line: bytes, count: int) -> tuple[str, ...]:
    """Column names for a file whose first edge line has ``count`` columns."""
    if count in layout.columns:
        return layout.columns[count]
    expected = " or ".join(f"{n} columns ({' '.join(names)})" for n, names in layout.columns.items())
    if count in layout.untimed:
        problem = (f"the file has no timestamps: its edge lines have {count} columns "
                   f"({' '.join(layout.untimed[count])}); a temporal {layout.name} file needs {expected}")
    else:
        problem = f"expected {expected}, found {count}"
    raise GraphFormatError(path, problem, number, line)


def _read_mtx_preamble(path: Path, lines: Iterator[tuple[int, bytes]], layout: _Layout) -> _Preamble:
    banner = next(lines, (1, b""))[1]
    words = banner.lower().split()
    if len(words) != 5 or words[0] != b"%%matrixmarket" or words[1] != b"matrix":
        raise GraphFormatError(path, "expected a Matrix Market banner "
                                     "'%%MatrixMarket matrix coordinate <field> <symmetry>'", 1, banner)
    layout_word, field_word, symmetry = words[2], words[3], words[4]
    if layout_word != b"coordinate":
        raise GraphFormatError(path, f"only 'coordinate' Matrix Market files hold edge lists, "
                                     f"not {layout_word.decode()!r}", 1, banner)
    if field_word == b"pattern":
        raise GraphFormatError(path, "the file has no timestamps: a 'pattern' matrix has no value column; "
                                     "a temporal mtx file stores the timestamp as the entry value", 1, banner)
    if field_word not in (b"integer", b"real") or symmetry not in (b"general", b"symmetric", b"skew-symmetric"):
        raise GraphFormatError(path, "unsupported Matrix Market field or symmetry (need integer|real and "
                                     "general|symmetric|skew-symmetric)", 1, banner)
    data = _content_lines(lines, layout.comments)
    size = next(data, None)
    if size is None:
        raise GraphFormatError(path, "the file has no size line 'rows cols nnz' and no edges")
    size_number, size_content, size_line = size
    sizes = size_content.split()
    if len(sizes) != 3 or not all(_INT.match(item) for item in sizes) or any(int(n) < 0 for n in sizes):
        raise GraphFormatError(path, "expected the size line 'rows cols nnz' (3 non-negative integers)",
                               size_number, size_line)
    rows, cols, nnz = (int(item) for item in sizes)
    first = next(data, None)
    if first is None:
        raise GraphFormatError(path, f"the file has no edges (its size line declares {nnz} entries)")
    number, content, line = first
    columns = _columns_for(path, layout, number, line, len(content.split()))
    return _Preamble(first_data_line=number, columns=columns, min_id=1, max_src=rows, max_dst=cols,
                     mtx_nnz=nnz, mtx_size_line=size_number)


# --- edge lines: vectorized parse, line-by-line diagnosis on failure -------------------------------

def _read_columns(path: Path, layout: _Layout, preamble: _Preamble) -> dict[str, np.ndarray]:
    """Parse the edge lines into named columns, raising for the first bad line."""
    try:
        table = _loadtxt(path, layout, preamble, np.dtype(np.int64))
        columns = {name: np.ascontiguousarray(table[:, k]) for k, name in enumerate(preamble.columns)}
        del table
    except GraphFormatError:
        raise
    except ValueError as error:
        if "number of columns changed" in str(error):  # a float pass would fail the same way
            _raise_first_bad_line(path, layout, preamble, str(error))
        columns = _read_columns_with_floats(path, layout, preamble)
    if not _ids_in_range(columns, preamble) or not all(np.isfinite(col).all() for col in columns.values()):
        _raise_first_bad_line(path, layout, preamble, "values out of range")
    return columns


def _read_columns_with_floats(path: Path, layout: _Layout, preamble: _Preamble) -> dict[str, np.ndarray]:
    """Second pass for files with non-integer values: ids as int64, the other columns as float64."""
    names = preamble.columns
    dtype = np.dtype([(name, np.int64 if k < 2 else np.float64) for k, name in enumerate(names)])
    try:
        table = _loadtxt(path, layout, preamble, dtype)
    except GraphFormatError:
        raise
    except ValueError as error:
        _raise_first_bad_line(path, layout, preamble, str(error))
    return {name: table[name].copy() if k < 2 else _whole_numbers_as_int(table[name])
            for k, name in enumerate(names)}


def _loadtxt(path: Path, layout: _Layout, preamble: _Preamble, dtype: np.dtype) -> np.ndarray:
    """Parse every edge line at once; ValueError when a line does not parse or has another column count."""
    # loadtxt is fastest on a text handle (about 2x a binary one) and with one comment character.
    with _open(path, text=True) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data": cannot happen after the preamble
        try:
            return np.loadtxt(handle, dtype=dtype, comments=list(layout.comments), delimiter=preamble.delimiter,
                              skiprows=preamble.first_data_line - 1, ndmin=1 if dtype.names else 2)
        except (OSError, EOFError) as error:  # corrupt or truncated gzip stream
            raise GraphFormatError(path, f"cannot be read: {error}") from None


def _whole_numbers_as_int(values: np.ndarray) -> np.ndarray:
    whole = np.isfinite(values).all() and (values == np.round(values)).all() \
        and np.abs(values).max(initial=0) <= _FLOAT_EXACT_INT
    return values.astype(np.int64) if whole else values.copy()


def _ids_in_range(columns: dict[str, np.ndarray], preamble: _Preamble) -> bool:
    src, dst = (columns[name] for name in preamble.columns[:2])
    if src.min() < preamble.min_id or dst.min() < preamble.min_id:
        return False
    if preamble.max_src is not None and src.max() > preamble.max_src:
        return False
    return preamble.max_dst is None or dst.max() <= preamble.max_dst


def _raise_first_bad_line(path: Path, layout: _Layout, preamble: _Preamble, parser_message: str):
    """Rescan the edge lines and raise for the first one that breaks a rule."""
    plainly_good = _plainly_good_line(preamble)
    for number, line in _numbered_lines(path):
        if number < preamble.first_data_line or (plainly_good and plainly_good.fullmatch(line)):
            continue
        content = _content(line, layout.comments)
        problem = content and _line_problem(_split(content, preamble.delimiter), preamble)
        if problem:
            raise GraphFormatError(path, problem, number, line)
    # The vectorized parser rejected something the line rules accept (should not happen).
    raise GraphFormatError(path, f"could not be parsed: {parser_message}")


def _plainly_good_line(preamble: _Preamble) -> re.Pattern | None:
    """A pattern for edge lines that pass every rule, to skip them fast (about 3x) when rescanning.

    It accepts a subset of what :func:`_line_problem` accepts: no trailing comments, no id that might
    overflow int64; ids bounded by an mtx size line need the full check, so there is none for mtx.
    """
    if preamble.max_src is not None or preamble.max_dst is not None:
        return None
    space = rb"[ \t\v\f]"
    separator = space + rb"+" if preamble.delimiter is None else space + rb"*,[ \t\v\f]*"
    node_id = rb"\+?[0-9]{1,18}"
    value = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    fields = [node_id, node_id] + [value] * (len(preamble.columns) - 2)
    return re.compile(space + rb"*" + separator.join(fields) + space + rb"*\r?")


def _line_problem(fields: list[bytes], preamble: _Preamble) -> str | None:
    names = preamble.columns
    if len(fields) != len(names):
        return f"expected {len(names)} columns ({' '.join(names)}) like the first edge line, found {len(fields)}"
    for name, text, limit in zip(names[:2], fields, (preamble.max_src, preamble.max_dst)):
        problem = _id_problem(name, text, preamble.min_id, limit)
        if problem:
            return problem
    for name, text in zip(names[2:], fields[2:]):
        if not _FLOAT.match(text):
            return f"{name} {text.decode('utf-8', 'replace')!r} is not a number"
    return None


def _id_problem(name: str, text: bytes, min_id: int, max_id: int | None) -> str | None:
    shown = text.decode("utf-8", "replace")
    if not _INT.match(text):
        kind = "is not an integer" if _FLOAT.match(text) else "is not a number"
        return f"node id ({name}) {shown!r} {kind}"
    value = int(text)
    if value < 0:
        return f"node id ({name}) {value} is negative"
    if value > _INT64_MAX:
        return f"node id ({name}) {shown} does not fit in int64"
    if value < min_id or (max_id is not None and value > max_id):
        return f"node id ({name}) {value} is outside 1..{max_id} given by the size line"
    return None
