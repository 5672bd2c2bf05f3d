"""Loaders for temporal edge lists: SNAP, KONECT, CSV with named columns, Network Repository and Matrix Market.

Rules shared by every format:

* any file may be gzip compressed (detected from its first bytes, whatever its name);
* fields are separated by whitespace (spaces or tabs); ``networkrepository`` files may use commas and
  ``csv`` files use the separator of their header line;
* comment lines may appear anywhere and text after a comment character is ignored; blank lines are ignored;
* repeated edges and self loops are kept, in file order: a temporal graph records every event;
* node ids are kept as in the file (``num_nodes = max_id + 1``, as the DST-EE paper counts) unless
  ``remap=True``, which maps the distinct ids, **in sorted order**, to ``0..n-1`` and records the
  original id of each new id in ``node_ids``;
* ``time``, ``weight`` and the other attributes are int64 when every value is a whole number, float64 otherwise;
* a weight column is returned as ``weight`` and ``attributes["weight"]``; when it has negative values (a
  signed graph, e.g. trust ratings -10..10) ``attributes["sign"]`` holds its sign as int8;
* anything else that is not an edge line is an error: one :class:`GraphFormatError` naming the file,
  the 1-based line number (comment and header lines counted), what was expected and the offending line.

Formats (``edges`` is accepted as another name for ``networkrepository``):

``snap``
    ``src dst ts`` lines, ``#`` comments, and optionally one header line before the data (the first
    non-comment line when none of its fields is a number, e.g. ``src dst time``).
``konect``
    ``src dst weight ts``; ``%`` comments (KONECT keeps ``% sym|asym ...`` and ``% m n n`` there).
    A first non-comment line of 2 integers followed by a 4-column line is a ``NODES EDGES`` header
    (as in copies of the SNAP bitcoin graphs): the file must hold exactly EDGES edge lines and no id
    may exceed NODES. A first line of 3 integers followed by a 4-column line (an uncommented
    ``m n n`` size line) is skipped unchecked. Lines of 3 columns (``src dst weight``) carry no
    timestamps: an error.
``csv``
    A header line of column names, then one edge per line. The separator is the header's: a comma,
    else a semicolon, else a tab, else whitespace. ``columns={"src": ..., "dst": ..., "time": ...,
    "weight": ...}`` names the columns of each role (weight is optional); roles left out are found
    by name, case-insensitively: src ``src source from u sender node1``, dst ``dst target to v
    receiver node2``, time ``time timestamp ts t unixts date``, weight ``weight rating w sign``.
    Every other column must be numeric and is kept in ``attributes`` under its header name.
    ``#`` comments.
``networkrepository``
    ``src dst ts`` or ``src dst weight ts`` (every line with the same count), ``%`` and ``#`` comments,
    optionally one header line like ``snap``; fields may be separated by commas.
``mtx``
    Matrix Market ``coordinate`` files: the banner ``%%MatrixMarket matrix coordinate <field>
    <symmetry>``, ``%`` comments, a size line ``rows cols nnz``, then ``i j value`` entries. For a
    temporal graph the value column is the timestamp. Ids are 1-based and must lie within the size
    line; the number of entries must equal ``nnz``; symmetric entries are returned as stored (not
    mirrored); a ``pattern`` field has no values and hence no timestamps: an error.

``format="auto"`` (the default) decides from the content of the first 64 lines, never from the file
name. "Comments" are the ``#``/``%`` lines before the first data line; "data lines" are the others:

==========================================================================  =====================
what the first lines hold                                                   format
==========================================================================  =====================
line 1 starts with ``%%MatrixMarket``                                       ``mtx``
a header (no field is a number) with ``,`` or ``;``                         ``csv``
a header without them, then 3-column lines (or nothing)                     ``snap``
a header without them naming src, dst, time in another order                ``csv``
a header without them, then lines of another width                          ``csv``
2 integers (``NODES EDGES``), then a 4-column line                          ``konect``
3 integers (``m n n``), then 4-column lines only (at least 2)               ``konect``
numbers separated by commas                                                 ``networkrepository``
3 columns after ``%`` comments                                              ``networkrepository``
3 columns, no comments or ``#`` comments                                    ``snap``
4 columns after ``#`` comments                                              ``networkrepository``
4 columns, no comments or ``%`` comments                                    ``konect``
2 columns on every data line (the loader reports: no timestamps)            ``snap``
nothing but ``#`` comments and blank lines (the loader reports: no edges)   ``snap``
nothing but ``%`` comments and blank lines (the loader reports: no edges)   ``networkrepository``
==========================================================================  =====================

Anything else raises a :class:`GraphFormatError` saying what it saw and listing the ``format=`` choices.
Giving ``columns=`` makes ``auto`` mean ``csv``.

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
from itertools import islice
from pathlib import Path
from typing import IO, Iterator, Mapping

import numpy as np

FORMATS = ("snap", "konect", "csv", "networkrepository", "mtx")
FORMAT_ALIASES = {"edges": "networkrepository"}
CSV_ROLES = ("src", "dst", "time", "weight")
CSV_ROLE_NAMES = {
    "src": ("src", "source", "from", "u", "sender", "node1"),
    "dst": ("dst", "target", "to", "v", "receiver", "node2"),
    "time": ("time", "timestamp", "ts", "t", "unixts", "date"),
    "weight": ("weight", "rating", "w", "sign"),
}
DETECTION_LINES = 64

_INT = re.compile(rb"[+-]?[0-9]+\Z")
_COUNT = re.compile(rb"[0-9]+\Z")
_FLOAT = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_HEADER_SEPARATORS = re.compile(rb"[\s,;]+")
_BOM = b"\xef\xbb\xbf"
_INT64_MAX = np.iinfo(np.int64).max
_FLOAT_EXACT_INT = 2 ** 53  # float64 holds every integer up to this exactly
_SHOWN_LINE_CHARS = 200
_ROLE_OF_COLUMN = {"src": "src", "dst": "dst", "ts": "time", "weight": "weight"}
# Ids kept as in the file make num_nodes = max id + 1, and the model allocates per-node tables of
# that size: ids this sparse (max id + 1 > 10 x distinct ids + 1e6, e.g. hashes) need remap=True.
_SPARSE_IDS_FACTOR = 10
_SPARSE_IDS_SLACK = 1_000_000


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
    """Temporal edges ``src -> dst`` at ``time``, in file order, with per-edge ``attributes`` by name."""

    src: np.ndarray
    dst: np.ndarray
    time: np.ndarray
    weight: np.ndarray | None
    num_nodes: int
    node_ids: np.ndarray | None
    source: str
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

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
    "konect": _Layout("konect", ("%",), {4: ("src", "dst", "weight", "ts")},
                      untimed={2: ("src", "dst"), 3: ("src", "dst", "weight")}),
    "csv": _Layout("csv", ("#",), {}),
    "networkrepository": _Layout("networkrepository", ("%", "#"),
                                 {3: ("src", "dst", "ts"), 4: ("src", "dst", "weight", "ts")},
                                 header_allowed=True, commas_allowed=True),
    "mtx": _Layout("mtx", ("%",), {3: ("src", "dst", "ts")}),
}


@dataclass(frozen=True)
class _Preamble:
    """Where the edge lines start, how they split, which column holds what, and the declared bounds."""

    first_data_line: int
    columns: tuple[str, ...]  # one name per column: the layout's (src dst ts) or a csv header's
    roles: dict[str, int]  # src, dst, time and optionally weight -> column index
    delimiter: str | None = None
    named_by_header: bool = False
    min_id: int = 0
    max_src: int | None = None
    max_dst: int | None = None
    declared_edges: int | None = None  # by an mtx size line or a KONECT NODES EDGES header
    size_line_number: int | None = None
    size_line: bytes | None = None
    size_kind: str = "size line"

    def label(self, k: int) -> str:
        """How error messages name column ``k``."""
        return f"column {k + 1} '{self.columns[k]}'" if self.named_by_header else self.columns[k]


def load_edges(path: str | os.PathLike, format: str = "auto", remap: bool = False,
               columns: Mapping[str, str] | None = None) -> TemporalEdges:
    """Load a temporal edge list; see the module docstring for the formats, ``auto`` and the rules.

    ``columns`` maps the roles ``src``, ``dst``, ``time`` (and optionally ``weight``) to csv column names.
    """
    path = Path(path)
    format = _canonical_format(format)
    if columns is not None:
        if format not in ("auto", "csv"):
            raise ValueError(f"columns= applies to csv files only, not to format={format!r}")
        format = "csv"
    explicit = format != "auto"
    format = detect_format(path) if format == "auto" else format
    layout = _LAYOUTS[format]
    try:
        preamble = _read_preamble(path, layout, columns)
    except GraphFormatError as error:
        if explicit:
            raise _with_format_hint(error, path, format) from None
        raise
    values = _read_columns(path, layout, preamble)
    _check_edge_count(path, preamble, len(values[0]))
    if not remap:
        _refuse_sparse_ids(path, layout, preamble, values)
    return _edges_from_columns(path, preamble, values, remap)


def detect_format(path: str | os.PathLike) -> str:
    """The format that ``format="auto"`` picks, from the content of the file's first lines (see the table)."""
    path = Path(path)
    with closing(_numbered_lines(path)) as lines:
        head = list(islice(lines, DETECTION_LINES + 1))
    return _format_of_lines(path, head[:DETECTION_LINES], whole_file=len(head) <= DETECTION_LINES)


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


def _canonical_format(format: str) -> str:
    format = FORMAT_ALIASES.get(format, format)
    if format != "auto" and format not in FORMATS:
        aliases = ", ".join(f"{alias!r} for {name!r}" for alias, name in FORMAT_ALIASES.items())
        raise ValueError(f"unknown graph format {format!r}; choose one of: auto, {', '.join(FORMATS)} "
                         f"(also {aliases})")
    return format


def _edges_from_columns(path: Path, preamble: _Preamble, values: list[np.ndarray], remap: bool) -> TemporalEdges:
    roles = preamble.roles
    src, dst = values[roles["src"]], values[roles["dst"]]
    weight = values[roles["weight"]] if "weight" in roles else None
    attributes = {} if weight is None else {"weight": weight}
    attributes.update((name, values[k]) for k, name in enumerate(preamble.columns) if k not in roles.values())
    if weight is not None and "sign" not in attributes and (weight < 0).any():
        attributes["sign"] = np.sign(weight).astype(np.int8)
    edges = TemporalEdges(src=src, dst=dst, time=values[roles["time"]], weight=weight,
                          num_nodes=int(max(src.max(), dst.max())) + 1, node_ids=None, source=str(path),
                          attributes=attributes)
    return remap_nodes(edges) if remap else edges


def _check_edge_count(path: Path, preamble: _Preamble, found: int) -> None:
    declared = preamble.declared_edges
    if declared is None or found == declared:
        return
    if preamble.size_kind == "size line":
        raise GraphFormatError(path, f"the size line (line {preamble.size_line_number}) declares {declared} "
                                     f"entries, but the file has {found}")
    raise GraphFormatError(path, f"the {preamble.size_kind} declares {declared} edges, but the file has {found} "
                                 f"edge lines (a truncated or partial copy?)",
                           preamble.size_line_number, preamble.size_line)


def _refuse_sparse_ids(path: Path, layout: _Layout, preamble: _Preamble, values: list[np.ndarray]) -> None:
    """A GraphFormatError naming the line of the largest id when the ids are too sparse to keep as
    they are (see ``_SPARSE_IDS_FACTOR``)."""
    src, dst = values[preamble.roles["src"]], values[preamble.roles["dst"]]
    if len(src) == 0:
        return
    largest = int(max(src.max(), dst.max()))
    if largest + 1 <= _SPARSE_IDS_FACTOR + _SPARSE_IDS_SLACK:  # never too sparse, whatever the distinct count
        return
    if largest < 16 * len(src):  # a bitmap no larger than the columns themselves
        present = np.zeros(largest + 1, dtype=bool)
        present[src] = True
        present[dst] = True
        distinct = int(np.count_nonzero(present))
    else:
        distinct = len(np.unique(np.concatenate((src, dst))))
    if largest + 1 <= _SPARSE_IDS_FACTOR * distinct + _SPARSE_IDS_SLACK:
        return
    edge = int(np.argmax(src)) if src.max() == largest else int(np.argmax(dst))
    number, line = _edge_line(path, layout, preamble, edge)
    raise GraphFormatError(path, f"node id {largest} would make num_nodes = max id + 1 = {largest + 1:,} for only "
                                 f"{distinct:,} distinct node ids (per-node tables that large); load it with "
                                 "remap=True (--remap) to number the ids 0..n-1", number, line)


def _edge_line(path: Path, layout: _Layout, preamble: _Preamble, edge: int) -> tuple[int | None, bytes | None]:
    """The line number and line of edge ``edge`` (0-based, in file order)."""
    seen = 0
    with closing(_numbered_lines(path)) as lines:
        for number, line in lines:
            if number >= preamble.first_data_line and _content(line, layout.comments):
                if seen == edge:
                    return number, line
                seen += 1
    return None, None


def _with_format_hint(error: GraphFormatError, path: Path, format: str) -> GraphFormatError:
    """Add to an error under an explicit format which format the content looks like, when it differs."""
    try:
        detected = detect_format(path)
    except GraphFormatError:
        return error
    if detected == format:
        return error
    line = None if error.line is None else error.line.encode("utf-8")
    return GraphFormatError(path, f"{error.problem} (the first lines look like format={detected!r}: pass "
                                  f"format='auto' or format={detected!r})", error.line_number, line)


# --- format detection ------------------------------------------------------------------------------

def _format_of_lines(path: Path, lines: list[tuple[int, bytes]], whole_file: bool) -> str:
    """The format of a file from its first lines; see the table in the module docstring."""
    if lines and lines[0][1].startswith(_BOM):
        lines[0] = (lines[0][0], lines[0][1][len(_BOM):])
    if lines and lines[0][1].lstrip().lower().startswith(b"%%matrixmarket"):
        return "mtx"
    comments: set[bytes] = set()
    data: list[tuple[int, bytes, bytes]] = []
    for number, line in lines:
        stripped = line.strip()
        if stripped[:1] in (b"#", b"%"):
            if not data:
                comments.add(stripped[:1])
        elif stripped:
            data.append((number, re.split(rb"[#%]", stripped, maxsplit=1)[0].strip(), line))
    if not data:
        if whole_file:  # no edges: let the loader say so
            return "networkrepository" if b"%" in comments else "snap"
        raise _unsure(path, f"the first {len(lines)} lines hold no data line", None, None)
    number, content, line = data[0]
    following = data[1][1] if len(data) > 1 else None
    if _is_header(content):
        if b"," in content or b";" in content:
            return "csv"
        names = [name.decode("utf-8", "replace").lower() for name in content.split()]
        recognised = _roles_by_name(names)
        reordered = any(recognised.get(role, k) != k for k, role in enumerate(("src", "dst", "time")))
        return "snap" if (following is None or len(following.split()) == 3) and not reordered else "csv"
    if b"," in content:
        return "networkrepository"
    fields = content.split()
    widths = [len(other.split()) for _, other, _ in data[1:]]
    # One 4-column line after 3 integers is likelier a snap file with a bad line than a KONECT size line.
    size_line = (len(fields) == 2 and widths[:1] == [4]) or (len(fields) == 3 and len(widths) > 1
                                                             and set(widths) == {4})
    if size_line and all(_COUNT.match(item) for item in fields):
        return "konect"
    if len(fields) == 3:
        return "networkrepository" if b"%" in comments else "snap"
    if len(fields) == 4:
        return "networkrepository" if b"#" in comments else "konect"
    if len(fields) == 2 and set(widths) <= {2}:
        return "snap"
    shown = f"{len(fields)} column{'s' * (len(fields) != 1)} on the first data line"
    if len(fields) == 2:
        shown += f", then {widths[0]} on the next"
    raise _unsure(path, shown, number, line)


def _unsure(path: Path, what: str, number: int | None, line: bytes | None) -> GraphFormatError:
    return GraphFormatError(path, f"cannot tell the format from the content ({what}); pass format= one of "
                                  f"{', '.join(FORMATS)}", number, line)


# --- reading lines ---------------------------------------------------------------------------------

def _open(path: Path, text: bool = False) -> IO:
    """Open a plain or gzip file; text mode decodes as latin-1 so that any byte is readable."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
    except FileNotFoundError:
        raise FileNotFoundError(f"graph file not found: {path}") from None
    except IsADirectoryError:
        raise GraphFormatError(path, "is a folder, not an edge-list file") from None
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

def _read_preamble(path: Path, layout: _Layout, columns: Mapping[str, str] | None = None) -> _Preamble:
    with closing(_numbered_lines(path)) as lines:
        if layout.name == "mtx":
            return _read_mtx_preamble(path, lines, layout)
        if layout.name == "csv":
            return _read_csv_preamble(path, lines, layout, columns)
        return _read_text_preamble(path, lines, layout)


def _read_text_preamble(path: Path, lines: Iterator[tuple[int, bytes]], layout: _Layout) -> _Preamble:
    data = _content_lines(lines, layout.comments)
    first = next(data, None)
    if first is not None and layout.header_allowed and _is_header(first[1]):
        first = next(data, None)
    size_header = None
    if first is not None and layout.name == "konect":
        first, size_header = _skip_konect_size_line(first, data)
    if first is None:
        raise GraphFormatError(path, "the file has no edges")
    number, content, line = first
    delimiter = "," if layout.commas_allowed and b"," in content else None
    columns = _columns_for(path, layout, number, line, len(_split(content, delimiter)))
    roles = {_ROLE_OF_COLUMN[name]: k for k, name in enumerate(columns)}
    preamble = _Preamble(first_data_line=number, columns=columns, roles=roles, delimiter=delimiter)
    if size_header is None:
        return preamble
    size_number, size_line, nodes, edges = size_header
    return replace(preamble, max_src=nodes, max_dst=nodes, declared_edges=edges, size_line_number=size_number,
                   size_line=size_line, size_kind="NODES EDGES header")


def _content_lines(lines: Iterator[tuple[int, bytes]], comments: tuple[str, ...]
                   ) -> Iterator[tuple[int, bytes, bytes]]:
    """``(line_number, content, line)`` for the lines that are neither blank nor comments."""
    for number, line in lines:
        content = _content(line, comments)
        if content:
            yield number, content, line


def _is_header(content: bytes) -> bool:
    return not any(_FLOAT.match(item) for item in _HEADER_SEPARATORS.split(content))


def _skip_konect_size_line(first: tuple[int, bytes, bytes], data: Iterator[tuple[int, bytes, bytes]]):
    """Skip a ``NODES EDGES`` / ``m n n`` line when the next line has 4 columns.

    Returns the first edge line and, for a ``NODES EDGES`` header, ``(line_number, line, nodes, edges)``.
    """
    fields = first[1].split()
    if len(fields) in (2, 3) and all(_COUNT.match(item) for item in fields):
        second = next(data, None)
        if second is not None and len(second[1].split()) == 4:
            header = (first[0], first[2], int(fields[0]), int(fields[1])) if len(fields) == 2 else None
            return second, header
        # Not a size line: the first line stays the first edge line (and is judged as such).
    return first, None


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


def _read_csv_preamble(path: Path, lines: Iterator[tuple[int, bytes]], layout: _Layout,
                       columns: Mapping[str, str] | None) -> _Preamble:
    data = _content_lines(lines, layout.comments)
    header = next(data, None)
    if header is None:
        raise GraphFormatError(path, "the file has no edges (and no csv header line)")
    number, content, line = header
    content = content[len(_BOM):] if content.startswith(_BOM) else content
    delimiter = next((char for char in (",", ";", "\t") if char.encode() in content), None)
    fields = _split(content, delimiter)
    if all(_FLOAT.match(item) for item in fields):
        raise GraphFormatError(path, "expected a csv header line of column names, found only numbers (for a file "
                                     "without a header use format='auto', 'snap', 'konect' or "
                                     "'networkrepository')", number, line)
    names = tuple(item.strip(b"\"'").decode("utf-8", "replace") for item in fields)
    if "" in names or len(set(names)) < len(names):
        raise GraphFormatError(path, "expected a csv header of distinct, non-empty column names", number, line)
    roles = _csv_roles(path, number, line, names, columns)
    first = next(data, None)
    if first is None:
        raise GraphFormatError(path, "the file has no edges")
    if len(_split(first[1], delimiter)) != len(names):
        raise GraphFormatError(path, f"expected {len(names)} columns like the header (line {number}), found "
                                     f"{len(_split(first[1], delimiter))}", first[0], first[2])
    return _Preamble(first_data_line=first[0], columns=names, roles=roles, delimiter=delimiter,
                     named_by_header=True)


def _csv_roles(path: Path, number: int, line: bytes, names: tuple[str, ...],
               columns: Mapping[str, str] | None) -> dict[str, int]:
    """Column index of each role: as ``columns`` says, else by a recognised name."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(CSV_ROLES))
    if unknown or len(set(columns.values())) < len(columns):
        raise ValueError(f"columns= must map distinct column names to the roles {', '.join(CSV_ROLES)}; "
                         f"got {columns}")
    roles = {}
    for role, name in columns.items():
        if name not in names:
            raise GraphFormatError(path, f"columns= names {name!r} as the {role} column, but the header's "
                                         f"columns are {list(names)}", number, line)
        roles[role] = names.index(name)
    for role in CSV_ROLES:
        matches = _columns_named_as(role, names, taken=roles.values())
        if role in roles or not matches:
            continue
        if len(matches) > 1:
            raise GraphFormatError(path, f"the columns {[names[k] for k in matches]} all look like the {role} "
                                         f"column; choose one with columns={{'{role}': ...}}", number, line)
        roles[role] = matches[0]
    missing = [role for role in CSV_ROLES[:3] if role not in roles]
    if missing:
        recognised = "; ".join(f"{role}: {' '.join(CSV_ROLE_NAMES[role])}" for role in missing)
        raise GraphFormatError(path, f"no {' and no '.join(missing)} column among the header's columns "
                                     f"{list(names)}; name them with the columns= argument, e.g. columns="
                                     f"{{'src': ..., 'dst': ..., 'time': ...}} (names recognised without it: "
                                     f"{recognised})", number, line)
    if "weight" in names and roles.get("weight", names.index("weight")) != names.index("weight"):
        raise GraphFormatError(path, f"the column 'weight' would clash with the weight attribute taken from "
                                     f"'{names[roles['weight']]}'; rename one of them", number, line)
    return roles


def _columns_named_as(role: str, names, taken=()) -> list[int]:
    return [k for k, name in enumerate(names) if name.lower() in CSV_ROLE_NAMES[role] and k not in taken]


def _roles_by_name(names) -> dict[str, int]:
    """The roles that exactly one column name announces."""
    matches = {role: _columns_named_as(role, names) for role in CSV_ROLES}
    return {role: found[0] for role, found in matches.items() if len(found) == 1}


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
    if len(sizes) != 3 or not all(_COUNT.match(item) for item in sizes):
        raise GraphFormatError(path, "expected the size line 'rows cols nnz' (3 non-negative integers)",
                               size_number, size_line)
    rows, cols, nnz = (int(item) for item in sizes)
    first = next(data, None)
    if first is None:
        raise GraphFormatError(path, f"the file has no edges (its size line declares {nnz} entries)")
    number, content, line = first
    columns = _columns_for(path, layout, number, line, len(content.split()))
    return _Preamble(first_data_line=number, columns=columns, roles={"src": 0, "dst": 1, "time": 2}, min_id=1,
                     max_src=rows, max_dst=cols, declared_edges=nnz, size_line_number=size_number,
                     size_line=size_line, size_kind="size line")


# --- edge lines: vectorized parse, line-by-line diagnosis on failure -------------------------------

def _read_columns(path: Path, layout: _Layout, preamble: _Preamble) -> list[np.ndarray]:
    """Every column of the edge lines, in file order; a GraphFormatError naming the first bad line."""
    try:
        table = _loadtxt(path, layout, preamble, np.dtype(np.int64))
        values = [np.ascontiguousarray(table[:, k]) for k in range(table.shape[1])]
        del table
    except GraphFormatError:
        raise
    except ValueError as error:
        if "number of columns changed" in str(error):  # a float pass would fail the same way
            _raise_first_bad_line(path, layout, preamble, str(error))
        values = _read_columns_with_floats(path, layout, preamble)
    if not _ids_in_range(values, preamble) or not all(np.isfinite(column).all() for column in values):
        _raise_first_bad_line(path, layout, preamble, "values out of range")
    return values


def _read_columns_with_floats(path: Path, layout: _Layout, preamble: _Preamble) -> list[np.ndarray]:
    """Second pass for files with non-integer values: ids as int64, the other columns as float64."""
    ids = (preamble.roles["src"], preamble.roles["dst"])
    count = len(preamble.columns)
    dtype = np.dtype([(f"c{k}", np.int64 if k in ids else np.float64) for k in range(count)])
    try:
        table = _loadtxt(path, layout, preamble, dtype)
    except GraphFormatError:
        raise
    except ValueError as error:
        _raise_first_bad_line(path, layout, preamble, str(error))
    return [table[f"c{k}"].copy() if k in ids else _whole_numbers_as_int(table[f"c{k}"]) for k in range(count)]


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


def _ids_in_range(values: list[np.ndarray], preamble: _Preamble) -> bool:
    src, dst = values[preamble.roles["src"]], values[preamble.roles["dst"]]
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
    overflow int64; ids bounded by a size line or header need the full check, so there is none then.
    """
    if preamble.max_src is not None or preamble.max_dst is not None:
        return None
    space = rb"[ \t\v\f]"
    if preamble.delimiter is None:
        separator = space + rb"+"
    else:
        separator = space + rb"*" + re.escape(preamble.delimiter.encode()) + space + rb"*"
    node_id = rb"\+?[0-9]{1,18}"
    value = rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    ids = (preamble.roles["src"], preamble.roles["dst"])
    fields = [node_id if k in ids else value for k in range(len(preamble.columns))]
    return re.compile(space + rb"*" + separator.join(fields) + space + rb"*\r?")


def _line_problem(fields: list[bytes], preamble: _Preamble) -> str | None:
    names = preamble.columns
    if len(fields) != len(names):
        like = "the header" if preamble.named_by_header else "the first edge line"
        return f"expected {len(names)} columns ({' '.join(names)}) like {like}, found {len(fields)}"
    src, dst = preamble.roles["src"], preamble.roles["dst"]
    for k, text in enumerate(fields):
        if k in (src, dst):
            max_id = preamble.max_src if k == src else preamble.max_dst
            problem = _id_problem(preamble.label(k), text, preamble, max_id)
        elif not _FLOAT.match(text):
            problem = f"{preamble.label(k)} {text.decode('utf-8', 'replace')!r} is not a number"
            if k == preamble.roles["time"]:
                problem += " (timestamps must be numbers, e.g. unix seconds)"
        else:
            problem = None
        if problem:
            return problem
    return None


def _id_problem(name: str, text: bytes, preamble: _Preamble, max_id: int | None) -> str | None:
    shown = text.decode("utf-8", "replace")
    if not _INT.match(text):
        kind = "is not an integer" if _FLOAT.match(text) else "is not a number"
        return f"node id ({name}) {shown!r} {kind}"
    value = int(text)
    if value < 0:
        return f"node id ({name}) {value} is negative"
    if value > _INT64_MAX:
        return f"node id ({name}) {shown} does not fit in int64"
    if value < preamble.min_id or (max_id is not None and value > max_id):
        return (f"node id ({name}) {value} is outside {preamble.min_id}..{max_id} given by the "
                f"{preamble.size_kind} (line {preamble.size_line_number})")
    return None
