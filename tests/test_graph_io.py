"""Temporal edge-list loaders: every format on small hand-written files, and every error case."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from gsparse.tasks.graphs import GraphFormatError, detect_format, load_edges, remap_nodes

REPO = Path(__file__).resolve().parents[1]
BUNDLED_COLLEGEMSG = REPO / "gsparse" / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"
SHARED_COLLEGEMSG = REPO.parent / "shared" / "data" / "CollegeMsg.txt"
SHARED_BITCOIN = REPO.parent / "shared" / "data" / "soc-sign-bitcoinotc.txt"


def write(folder: Path, name: str, text: str, compress: bool = False) -> Path:
    path = folder / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def assert_edges(edges, src, dst, time, weight=None):
    np.testing.assert_array_equal(edges.src, src)
    np.testing.assert_array_equal(edges.dst, dst)
    np.testing.assert_array_equal(edges.time, time)
    assert edges.src.dtype == edges.dst.dtype == np.int64
    if weight is None:
        assert edges.weight is None
    else:
        np.testing.assert_array_equal(edges.weight, weight)


# --- formats ------------------------------------------------------------------------------------

SNAP_TEXT = "# a comment\nsrc dst time\n3 1 100\n\n1 3 101\n# a comment in the middle\n3\t1\t102\n3 3 103\n"


@pytest.mark.parametrize("compress", [False, True])
def test_snap_header_comments_repeats_and_self_loops(tmp_path, compress):
    path = write(tmp_path, "g.txt.gz" if compress else "g.txt", SNAP_TEXT, compress)
    edges = load_edges(path)
    assert_edges(edges, [3, 1, 3, 3], [1, 3, 1, 3], [100, 101, 102, 103])
    assert edges.time.dtype == np.int64
    assert len(edges) == 4 and edges.num_nodes == 4  # max id 3 + 1; id 0 and 2 never appear
    assert edges.node_ids is None and edges.source == str(path)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    path = write(tmp_path, "g.txt", "1 2 5\n", compress=True)
    assert_edges(load_edges(path), [1], [2], [5])


def test_snap_without_header_and_trailing_comment(tmp_path):
    path = write(tmp_path, "g.txt", "0 1 7 # first\n1 0 8\n")
    assert_edges(load_edges(path, format="snap"), [0, 1], [1, 0], [7, 8])


def test_float_timestamps_only_when_the_file_has_them(tmp_path):
    floats = load_edges(write(tmp_path, "f.txt", "1 2 0.5\n2 1 1e3\n"))
    assert floats.time.dtype == np.float64
    np.testing.assert_array_equal(floats.time, [0.5, 1000.0])
    whole = load_edges(write(tmp_path, "w.txt", "1 2 3.0\n2 1 4\n"))
    assert whole.time.dtype == np.int64
    np.testing.assert_array_equal(whole.time, [3, 4])


@pytest.mark.parametrize("compress", [False, True])
def test_network_repository_edges_with_weight(tmp_path, compress):
    text = "% sym unweighted\n% 3 3 3\n1 2 1 988675200\n2 3 1 988675201\n1 2 2 988675200\n"
    path = write(tmp_path, "g.edges.gz" if compress else "g.edges", text, compress)
    edges = load_edges(path)
    assert_edges(edges, [1, 2, 1], [2, 3, 2], [988675200, 988675201, 988675200], weight=[1, 1, 2])
    assert edges.num_nodes == 4


def test_network_repository_edges_three_columns_commas_and_hash_comments(tmp_path):
    edges = load_edges(write(tmp_path, "g.edges", "% c\n1,2,10\n# c\n2, 3, 11\n"))
    assert_edges(edges, [1, 2], [2, 3], [10, 11])


def test_konect_with_comment_header(tmp_path):
    text = "% asym positive\n% 3 4 4\n1 2 1 10\n2 4 -1 11\n\n4 4 1 12\n"
    edges = load_edges(write(tmp_path, "out.test", text))
    assert_edges(edges, [1, 2, 4], [2, 4, 4], [10, 11, 12], weight=[1, -1, 1])
    assert edges.num_nodes == 5


def test_konect_nodes_edges_header_is_skipped(tmp_path):
    edges = load_edges(write(tmp_path, "out.test", "4 2\n1 2 1 10\n2 4 1 11\n"))
    assert_edges(edges, [1, 2], [2, 4], [10, 11], weight=[1, 1])


def test_konect_uncommented_m_n_n_size_line_is_skipped(tmp_path):
    edges = load_edges(write(tmp_path, "g.txt", "2 4 4\n1 2 1 10\n2 4 1 11\n"))
    assert_edges(edges, [1, 2], [2, 4], [10, 11], weight=[1, 1])


@pytest.mark.parametrize("compress", [False, True])
def test_matrix_market_value_is_the_timestamp(tmp_path, compress):
    text = "%%MatrixMarket matrix coordinate integer general\n% comment\n5 5 3\n1 2 10\n5 1 11\n1 2 12\n"
    path = write(tmp_path, "g.mtx.gz" if compress else "g.mtx", text, compress)
    edges = load_edges(path)
    assert_edges(edges, [1, 5, 1], [2, 1, 2], [10, 11, 12])
    assert edges.num_nodes == 6




# --- format detection by content -----------------------------------------------------------------

# (case, content, misleading file name, detected format, src, dst, time, weight)
DETECTION_CASES = [
    ("snap with # comment and header", SNAP_TEXT, "graph.mtx", "snap",
     [3, 1, 3, 3], [1, 3, 1, 3], [100, 101, 102, 103], None),
    ("snap without header", "0 1 7\n1 0 8\n", "out.graph", "snap", [0, 1], [1, 0], [7, 8], None),
    ("KONECT NODES EDGES header, tabs, signed", "5\t3\n1\t2\t-10\t100\n2\t5\t4\t101\n5\t1\t-1\t102\n",
     "x.txt", "konect", [1, 2, 5], [2, 5, 1], [100, 101, 102], [-10, 4, -1]),
    ("konect with % comments", "% asym positive\n% 3 4 4\n1 2 1 10\n2 4 2 11\n4 4 1 12\n", "g.csv", "konect",
     [1, 2, 4], [2, 4, 4], [10, 11, 12], [1, 2, 1]),
    # Network Repository's 4-column layout is KONECT's: auto calls it konect, the edges are the same.
    ("networkrepository src dst 1 ts", "% sym unweighted\n% 3 3 2\n1 2 1 988675200\n2 3 1 988675201\n",
     "graph.mtx", "konect", [1, 2], [2, 3], [988675200, 988675201], [1, 1]),
    ("networkrepository src dst ts", "% comment\n1 2 10\n2 3 11\n", "g.txt", "networkrepository",
     [1, 2], [2, 3], [10, 11], None),
    ("networkrepository with commas", "1,2,1,10\n2,3,1,11\n", "data.txt", "networkrepository",
     [1, 2], [2, 3], [10, 11], [1, 1]),
    ("csv with header and extra column", "source,target,rating,timestamp,hours\n1,2,-3,100,0.5\n2,3,4,101,2\n",
     "g.edges", "csv", [1, 2], [2, 3], [100, 101], [-3, 4]),
    ("mtx", "%%MatrixMarket matrix coordinate integer general\n% c\n5 5 2\n1 2 10\n5 1 11\n", "out.graph", "mtx",
     [1, 5], [2, 1], [10, 11], None),
]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("case", DETECTION_CASES, ids=[case[0] for case in DETECTION_CASES])
def test_auto_detects_the_format_from_the_content_not_the_name(tmp_path, case, compress):
    _, text, name, expected_format, src, dst, time, weight = case
    path = write(tmp_path, name + ".gz" * compress, text, compress)
    assert detect_format(path) == expected_format
    for fmt in ("auto", expected_format):
        edges = load_edges(path, format=fmt)
        assert_edges(edges, src, dst, time, weight)
        assert edges.attributes.get("weight") is edges.weight


def test_signed_weights_get_a_sign_attribute(tmp_path):
    signed = load_edges(write(tmp_path, "s.txt", "5\t3\n1\t2\t-10\t100\n2\t5\t4\t101\n5\t1\t-1\t102\n"))
    assert signed.attributes["sign"].dtype == np.int8
    np.testing.assert_array_equal(signed.attributes["sign"], [-1, 1, -1])
    np.testing.assert_array_equal(signed.attributes["weight"], [-10, 4, -1])
    positive = load_edges(write(tmp_path, "p.txt", "% c\n1 2 3 10\n"))
    assert set(positive.attributes) == {"weight"}
    assert load_edges(write(tmp_path, "t.txt", "1 2 10\n")).attributes == {}


def test_csv_extra_numeric_columns_become_attributes(tmp_path):
    path = write(tmp_path, "g.csv", "source,target,rating,timestamp,hours\n1,2,-3,100,0.5\n2,3,4,101,2\n")
    edges = load_edges(path)
    assert list(edges.attributes) == ["weight", "hours", "sign"]
    assert edges.attributes["hours"].dtype == np.float64
    np.testing.assert_array_equal(edges.attributes["hours"], [0.5, 2.0])
    np.testing.assert_array_equal(edges.attributes["sign"], [-1, 1])
    assert edges.num_nodes == 4


@pytest.mark.parametrize("header, row", [
    ("Timestamp;To;From", "100;2;1"),  # semicolons, any order, any case
    ("t\tv\tu", "100\t2\t1"),
    ("time dst src", "100 2 1"),
])
def test_csv_separator_and_column_order_come_from_the_header(tmp_path, header, row):
    path = write(tmp_path, "g.txt", f"{header}\n{row}\n{row.replace('100', '101')}\n")
    assert detect_format(path) == "csv"
    assert_edges(load_edges(path), [1, 1], [2, 2], [100, 101])


def test_csv_columns_argument_names_the_roles(tmp_path):
    path = write(tmp_path, "g.csv", "from_id,to_id,when,score,kind\n7,8,10,0.5,1\n8,7,11,1.5,2\n")
    edges = load_edges(path, columns={"src": "from_id", "dst": "to_id", "time": "when", "weight": "score"})
    assert_edges(edges, [7, 8], [8, 7], [10, 11], weight=[0.5, 1.5])
    np.testing.assert_array_equal(edges.attributes["kind"], [1, 2])
    # Only some roles given: the others are found by name; weight stays optional.
    path = write(tmp_path, "h.csv", "src,dst,created,score\n7,8,10,0.5\n")
    edges = load_edges(path, format="csv", columns={"time": "created"})
    assert_edges(edges, [7], [8], [10])
    np.testing.assert_array_equal(edges.attributes["score"], [0.5])


def test_edges_is_an_alias_of_networkrepository(tmp_path):
    path = write(tmp_path, "g.txt", "# c\n1 2 1 10\n")
    assert_edges(load_edges(path, format="edges"), [1], [2], [10], weight=[1])
    assert detect_format(path) == "networkrepository"  # 4 columns after # comments


def test_remap_carries_attributes(tmp_path):
    path = write(tmp_path, "g.csv", "src,dst,time,weight,hours\n30,10,1,-2,5\n10,70,2,3,6\n")
    edges = load_edges(path, remap=True)
    assert_edges(edges, [1, 0], [0, 2], [1, 2], weight=[-2, 3])
    assert set(edges.attributes) == {"weight", "hours", "sign"}
    np.testing.assert_array_equal(edges.attributes["hours"], [5, 6])
    np.testing.assert_array_equal(edges.attributes["sign"], [-1, 1])


def test_remap_in_sorted_order(tmp_path):
    path = write(tmp_path, "g.txt", "30 10 1\n10 70 2\n70 30 3\n30 10 4\n")
    edges = load_edges(path, remap=True)
    assert_edges(edges, [1, 0, 2, 1], [0, 2, 1, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(edges.node_ids, [10, 30, 70])
    assert edges.num_nodes == 3


def test_remap_of_sparse_huge_ids_takes_the_sorting_path(tmp_path):
    remapped = load_edges(write(tmp_path, "g.txt", "1000000000000 5 1\n5 7 2\n"), remap=True)
    np.testing.assert_array_equal(remapped.node_ids, [5, 7, 1000000000000])
    np.testing.assert_array_equal(remapped.src, [2, 0])
    np.testing.assert_array_equal(remapped.dst, [0, 1])


# --- the bundled graph --------------------------------------------------------------------------

def check_collegemsg(edges):
    assert len(edges) == 59835
    assert edges.num_nodes == 1900
    assert (edges.src[0], edges.dst[0], edges.time[0]) == (1, 2, 1082040961)
    assert (edges.src[-1], edges.dst[-1], edges.time[-1]) == (1878, 1624, 1098777142)
    assert min(edges.src.min(), edges.dst.min()) == 1
    assert np.all(np.diff(edges.time) >= 0)


def test_bundled_collegemsg():
    check_collegemsg(load_edges(BUNDLED_COLLEGEMSG))


def test_bundled_collegemsg_remapped():
    edges = load_edges(BUNDLED_COLLEGEMSG, remap=True)
    assert edges.num_nodes == 1899
    np.testing.assert_array_equal(edges.node_ids, np.arange(1, 1900))


@pytest.mark.skipif(not SHARED_COLLEGEMSG.is_file(), reason=f"shared data {SHARED_COLLEGEMSG} is not present")
def test_shared_collegemsg():
    check_collegemsg(load_edges(SHARED_COLLEGEMSG))


@pytest.mark.skipif(not SHARED_BITCOIN.is_file(), reason=f"shared data {SHARED_BITCOIN} is not present")
def test_shared_bitcoin_otc_konect_copy_loads_by_content(tmp_path):
    assert detect_format(SHARED_BITCOIN) == "konect"
    edges = load_edges(SHARED_BITCOIN)
    assert len(edges) == 21492
    assert min(edges.src.min(), edges.dst.min()) == 1 and max(edges.src.max(), edges.dst.max()) == 5881
    assert edges.num_nodes == 5882
    assert (edges.src[0], edges.dst[0], edges.weight[0], edges.time[0]) == (1, 2, 4, 1289241911)
    assert (edges.weight.min(), edges.weight.max()) == (-10, 10)
    np.testing.assert_array_equal(edges.attributes["sign"], np.sign(edges.weight))
    # Compressed under a misleading name, it still loads; cut short, the header gives it away.
    lines = SHARED_BITCOIN.read_bytes().splitlines(keepends=True)
    assert len(load_edges(write(tmp_path, "bitcoin.mtx.gz", b"".join(lines).decode(), compress=True))) == 21492
    message = format_error(write(tmp_path, "cut.txt", b"".join(lines[:101]).decode()))
    assert "cut.txt, line 1" in message and "declares 21492 edges" in message and "has 100" in message
    assert "'5881 21492'" in message


# --- errors -------------------------------------------------------------------------------------

def format_error(path, **kwargs) -> str:
    with pytest.raises(GraphFormatError) as caught:
        load_edges(path, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize("compress", [False, True])
def test_missing_column_names_file_line_and_text(tmp_path, compress):
    text = "src dst time\n1 2 3\n# comment\n4 5 6\n7 8\n9 10 11\n"
    message = format_error(write(tmp_path, "short.txt", text, compress))
    assert "short.txt" in message and "line 5" in message and "'7 8'" in message
    assert "expected 3 columns" in message and "found 2" in message


def test_extra_column_is_an_error(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3\n4 5 6 7\n"))
    assert "line 2" in message and "found 4" in message


def test_letter_in_a_number(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3\n4 5 6\n7 8 9x\n"))
    assert "line 3" in message and "'9x' is not a number" in message and "'7 8 9x'" in message


def test_letter_in_a_node_id(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3\n4 x5 6\n"))
    assert "line 2" in message and "'x5' is not a number" in message


def test_float_node_id(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3\n4.0 5 6.5\n"))
    assert "line 2" in message and "'4.0' is not an integer" in message


def test_negative_node_id(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "# c\n1 2 3\n4 -5 6\n"))
    assert "line 3" in message and "-5 is negative" in message


def test_not_a_number_timestamp(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3.5\n4 5 nan\n"))
    assert "line 2" in message and "'nan' is not a number" in message


def test_comment_character_of_another_format_is_not_skipped(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3\n% not a snap comment\n"))
    assert "line 2" in message


def test_second_header_line_is_an_error(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "src dst time\nfrom to when\n1 2 3\n"))
    assert "line 2" in message and "'from' is not a number" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n", "src dst time\n"])
def test_file_without_edges(tmp_path, text):
    assert "has no edges" in format_error(write(tmp_path, "g.txt", text))


def test_two_column_file_has_no_timestamps(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2\n2 3\n"))
    assert "no timestamps" in message and "line 1" in message


def test_konect_three_columns_has_no_timestamps(tmp_path):
    message = format_error(write(tmp_path, "out.test", "% asym\n% 2 3 3\n1 2 1\n2 3 1\n"), format="konect")
    assert "no timestamps" in message and "line 3" in message and "(src dst weight)" in message
    assert "look like format='networkrepository'" in message  # what auto would pick
    assert message.endswith("'1 2 1'")


def test_mtx_entry_count_must_match_the_size_line(tmp_path):
    text = "%%MatrixMarket matrix coordinate integer general\n3 3 3\n1 2 10\n2 3 11\n"
    message = format_error(write(tmp_path, "g.mtx", text))
    assert "g.mtx" in message and "declares 3 entries" in message and "has 2" in message


def test_mtx_pattern_has_no_timestamps(tmp_path):
    text = "%%MatrixMarket matrix coordinate pattern general\n3 3 2\n1 2\n2 3\n"
    message = format_error(write(tmp_path, "g.mtx", text))
    assert "no timestamps" in message and "line 1" in message and "pattern" in message


def test_mtx_ids_are_one_based_and_within_the_size_line(tmp_path):
    header = "%%MatrixMarket matrix coordinate integer general\n3 3 2\n1 2 10\n"
    assert "line 4" in format_error(write(tmp_path, "zero.mtx", header + "0 3 11\n"))
    assert "line 4" in format_error(write(tmp_path, "big.mtx", header + "2 4 11\n"))


def test_mtx_needs_the_banner(tmp_path):
    message = format_error(write(tmp_path, "g.mtx", "3 3 1\n1 2 10\n"), format="mtx")
    assert "line 1" in message and "MatrixMarket" in message


def test_truncated_gzip(tmp_path):
    path = tmp_path / "g.txt.gz"
    path.write_bytes(gzip.compress(b"1 2 3\n" * 1000)[:-20])
    assert "cannot be read" in format_error(path)


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown graph format 'xml'; choose one of: auto, snap, konect, csv, "
                                         "networkrepository, mtx"):
        load_edges(write(tmp_path, "g.txt", "1 2 3\n"), format="xml")


def test_node_id_too_large_for_int64(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "1 2 3\n99999999999999999999 2 3\n"))
    assert "line 2" in message and "does not fit in int64" in message


def test_bad_line_in_comma_separated_edges(tmp_path):
    message = format_error(write(tmp_path, "g.edges", "1,2,1,10\n2,3,1,11\n2,3,,12\n"))
    assert "line 3" in message and "'' is not a number" in message


def test_bad_line_after_many_good_ones(tmp_path):
    good = "".join(f"{i} {i + 1} {1000 + i}\n" for i in range(5000))
    message = format_error(write(tmp_path, "g.txt", good + "7 8 9 10\n" + good))
    assert "line 5001" in message and "'7 8 9 10'" in message


def test_konect_header_edge_count_must_match(tmp_path):
    message = format_error(write(tmp_path, "short.txt", "5 3\n1 2 1 10\n2 3 1 11\n"))
    assert "short.txt, line 1" in message and "'5 3'" in message
    assert "NODES EDGES header declares 3 edges" in message and "the file has 2" in message


def test_konect_header_node_count_bounds_the_ids(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "2 2\n1 2 1 10\n1 3 1 11\n"))
    assert "line 3" in message and "node id (dst) 3 is outside 0..2" in message
    assert "NODES EDGES header (line 1)" in message


@pytest.mark.parametrize("fmt, text, expected", [
    ("konect", "1 2 3\n2 3 4\n", "the file has no timestamps: its edge lines have 3 columns (src dst weight)"),
    ("csv", "1,2,3\n2,3,4\n", "expected a csv header line of column names, found only numbers"),
    ("mtx", "1 2 3\n", "expected a Matrix Market banner"),
    ("snap", "1 2 1 10\n", "expected 3 columns (src dst ts), found 4"),
])
def test_explicit_wrong_format_is_one_clear_error(tmp_path, fmt, text, expected):
    message = format_error(write(tmp_path, "g.txt", text), format=fmt)
    assert "g.txt, line 1" in message and expected in message


def test_csv_missing_role_names_header_columns_and_the_argument(tmp_path):
    message = format_error(write(tmp_path, "g.csv", "source,rating,timestamp\n1,2,3\n"))
    assert "g.csv, line 1" in message and "no dst column" in message
    assert "['source', 'rating', 'timestamp']" in message and "columns=" in message
    assert "'source,rating,timestamp'" in message


def test_csv_columns_argument_must_name_header_columns(tmp_path):
    path = write(tmp_path, "g.csv", "a,b,c\n1,2,3\n")
    message = format_error(path, columns={"src": "a", "dst": "b", "time": "when"})
    assert "line 1" in message and "'when' as the time column" in message and "['a', 'b', 'c']" in message
    with pytest.raises(ValueError, match="roles src, dst, time, weight"):
        load_edges(path, columns={"source": "a"})
    with pytest.raises(ValueError, match="csv files only"):
        load_edges(path, format="snap", columns={"src": "a"})


def test_csv_two_columns_for_one_role(tmp_path):
    message = format_error(write(tmp_path, "g.csv", "src,source,dst,time\n1,2,3,4\n"))
    assert "['src', 'source'] all look like the src column" in message


def test_csv_non_numeric_cell_names_line_and_column(tmp_path):
    message = format_error(write(tmp_path, "g.csv", "src,dst,time,label\n1,2,3,4\n5,6,7,spam\n"))
    assert "g.csv, line 3" in message and "column 4 'label' 'spam' is not a number" in message


def test_csv_date_must_be_numeric(tmp_path):
    message = format_error(write(tmp_path, "g.csv", "u,v,date\n1,2,100\n1,2,2020-01-01\n"))
    assert "line 3" in message and "column 3 'date' '2020-01-01' is not a number" in message
    assert "timestamps must be numbers" in message


def test_csv_row_width_must_match_the_header(tmp_path):
    message = format_error(write(tmp_path, "g.csv", "src,dst,time,w\n1,2,3\n"))
    assert "line 2" in message and "expected 4 columns like the header (line 1), found 3" in message


def test_unsure_detection_says_what_it_saw_and_the_choices(tmp_path):
    message = format_error(write(tmp_path, "g.txt", "# c\n1 2 3 4 5\n"))
    assert "line 2" in message and "5 columns on the first data line" in message
    assert "format= one of snap, konect, csv, networkrepository, mtx" in message


def test_a_folder_is_not_an_edge_list(tmp_path):
    with pytest.raises(GraphFormatError, match="is a folder, not an edge-list file"):
        load_edges(tmp_path)
