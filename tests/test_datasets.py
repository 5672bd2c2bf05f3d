"""Dataset cards (gsparse/tasks/graphs/cards/*.yaml) and load_dataset: lookup, count checks and the missing-file message."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from gsparse.tasks.graphs import (DATA_DIR_ENV, DatasetError, GraphFormatError, check_dataset_counts, dataset_card,
                            list_datasets, load_dataset, load_edges, read_card, resolve_data_dir)
from gsparse.tasks.graphs.datasets import CARDS_DIR, DEFAULT_DATA_DIR

REPO = Path(__file__).resolve().parents[1]
BUNDLED_COLLEGEMSG = REPO / "gsparse" / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"


@pytest.fixture(autouse=True)
def no_data_dir_from_the_environment(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def test_cards_ship_in_the_package_and_data_defaults_to_the_checkouts_graphs_folder():
    assert CARDS_DIR == REPO / "gsparse" / "tasks" / "graphs" / "cards"
    assert DEFAULT_DATA_DIR == REPO / "graphs" / "data"  # a source checkout; installed: ~/.cache/gsparse/graphs


def test_known_datasets():
    assert list_datasets() == ["bitcoin-otc", "collegemsg", "ia-email", "wiki-talk"]


@pytest.mark.parametrize("name, file, fmt, nodes, edges", [
    ("ia-email", "ia-enron-email-dynamic.edges", "edges", 87274, 1148072),
    ("wiki-talk", "wiki-talk-temporal.txt.gz", "snap", 1140149, 7833140),
    ("collegemsg", "CollegeMsg.txt", "snap", 1900, 59835),
    ("bitcoin-otc", "soc-sign-bitcoinotc.txt", "konect", 5882, 21492),
])
def test_card_contents(name, file, fmt, nodes, edges):
    card = dataset_card(name)
    assert (card.name, card.file, card.format, card.num_nodes, card.num_edges) == (name, file, fmt, nodes, edges)
    assert card.directed is True
    assert card.source_url.startswith("https://") and card.download_url.startswith("https://")
    assert card.citation and card.description and card.obtain


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*bitcoin-otc, collegemsg, ia-email, wiki-talk"):
        dataset_card("nope")


def test_collegemsg_loads_from_the_bundled_file_and_passes_the_count_check():
    edges = load_dataset("collegemsg")
    assert Path(edges.source) == BUNDLED_COLLEGEMSG
    assert len(edges) == 59835 and edges.num_nodes == 1900
    assert (edges.src[0], edges.dst[0], edges.time[0]) == (1, 2, 1082040961)


def test_bitcoin_otc_loads_from_the_bundled_copy_with_its_ratings():
    edges = load_dataset("bitcoin-otc")
    assert Path(edges.source).name == "soc-sign-bitcoinotc.txt" and len(edges) == 21492 and edges.num_nodes == 5882
    assert (edges.src[0], edges.dst[0], edges.weight[0], edges.time[0]) == (1, 2, 4, 1289241911)
    assert edges.attributes["weight"].min() == -10 and edges.attributes["weight"].max() == 10
    np.testing.assert_array_equal(edges.attributes["sign"], np.sign(edges.weight))


def test_collegemsg_remapped_still_passes_the_count_check():
    edges = load_dataset("collegemsg", remap=True)
    assert edges.num_nodes == 1899
    np.testing.assert_array_equal(edges.node_ids, np.arange(1, 1900))


def truncated_collegemsg(folder: Path, lines: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "CollegeMsg.txt"
    with open(BUNDLED_COLLEGEMSG) as source:
        path.write_text("".join(source.readline() for _ in range(lines)))
    return path


def test_truncated_copy_in_the_data_dir_fails_the_count_check(tmp_path):
    path = truncated_collegemsg(tmp_path, 1001)  # header + 1000 edges
    with pytest.raises(DatasetError) as caught:
        load_dataset("collegemsg", data_dir=tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert "expected 59,835 edges and 1,900 nodes" in message
    assert "found 1,000 edges" in message
    assert "truncated" in message


def test_count_check_can_be_skipped(tmp_path):
    truncated_collegemsg(tmp_path, 101)
    assert len(load_dataset("collegemsg", data_dir=tmp_path, check_counts=False)) == 100


def test_data_dir_from_the_environment(tmp_path, monkeypatch):
    truncated_collegemsg(tmp_path, 11)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "other") == tmp_path / "other"  # the argument wins
    assert len(load_dataset("collegemsg", check_counts=False)) == 10


def test_data_dir_defaults_to_the_repository():
    assert resolve_data_dir() == REPO / "graphs" / "data"


def test_checker_names_expected_and_found_nodes():
    edges = load_edges(BUNDLED_COLLEGEMSG)
    check_dataset_counts(dataset_card("collegemsg"), edges)
    with pytest.raises(DatasetError, match=r"expected 1,148,072 edges and 87,274 nodes.*found 59,835 edges and "
                                           r"1,900 nodes"):
        check_dataset_counts(dataset_card("ia-email"), edges)


@pytest.mark.parametrize("name", ["wiki-talk", "ia-email"])
def test_missing_file_says_where_to_put_what_and_where_to_get_it(tmp_path, name):
    card = dataset_card(name)
    with pytest.raises(DatasetError) as caught:
        load_dataset(name, data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / card.file) in message
    assert card.download_url in message and card.source_url in message
    assert DATA_DIR_ENV in message


def test_alternate_file_name_is_accepted(tmp_path):
    path = tmp_path / "wiki-talk-temporal.txt"
    path.write_text("0 1 5\n")
    with pytest.raises(DatasetError, match="expected 7,833,140 edges"):
        load_dataset("wiki-talk", data_dir=tmp_path)
    assert len(load_dataset("wiki-talk", data_dir=tmp_path, check_counts=False)) == 1


def test_a_path_loads_the_file_directly(tmp_path):
    path = tmp_path / "g.edges"
    path.write_text("% c\n1 2 1 10\n")
    edges = load_dataset(path)
    assert edges.weight is not None and edges.time.tolist() == [10]
    assert len(load_dataset(str(path), remap=True)) == 1


def test_a_path_takes_format_and_columns(tmp_path):
    path = tmp_path / "ratings.txt"
    path.write_text("who,whom,when,stars\n3,4,100,-2\n4,3,101,5\n")
    edges = load_dataset(path, columns={"src": "who", "dst": "whom", "time": "when", "weight": "stars"})
    assert (edges.src.tolist(), edges.dst.tolist(), edges.time.tolist()) == ([3, 4], [4, 3], [100, 101])
    assert edges.attributes["sign"].tolist() == [-1, 1]
    snap = tmp_path / "g.txt"
    snap.write_text("1 2 3\n")
    with pytest.raises(GraphFormatError, match="no timestamps"):
        load_dataset(snap, format="konect")


def test_a_known_dataset_is_read_in_its_cards_format():
    assert len(load_dataset("collegemsg", format="snap")) == 59835
    with pytest.raises(ValueError, match=r"read in its card's format \(snap\)"):
        load_dataset("collegemsg", format="csv")
    with pytest.raises(ValueError, match="format= and columns= apply to a file path"):
        load_dataset("collegemsg", columns={"src": "src"})


def test_neither_a_name_nor_a_file(tmp_path):
    with pytest.raises(DatasetError, match="neither a known dataset"):
        load_dataset(str(tmp_path / "missing.txt"))


def test_card_file_checks(tmp_path):
    source = (CARDS_DIR / "collegemsg.yaml").read_text()
    renamed = tmp_path / "other.yaml"
    renamed.write_text(source)
    with pytest.raises(DatasetError, match="must match the file name"):
        read_card(renamed)
    card = tmp_path / "collegemsg.yaml"
    card.write_text(source.replace("num_edges: 59835", "num_edges: many"))
    with pytest.raises(DatasetError, match="'num_edges' must be of type int"):
        read_card(card)
    card.write_text(source + "license: free\n")
    with pytest.raises(DatasetError, match="unknown keys"):
        read_card(card)
    card.write_text(source.replace("format: snap", "format: xml"))
    with pytest.raises(DatasetError, match="format must be one of.*'networkrepository', 'mtx', 'edges'"):
        read_card(card)
    card.write_text(source.replace("format: snap", "format: csv"))
    assert read_card(card).format == "csv"


def test_bundled_card_path_is_relative_to_the_cards(tmp_path):
    shutil.copy(CARDS_DIR / "collegemsg.yaml", tmp_path / "collegemsg.yaml")
    card = read_card(tmp_path / "collegemsg.yaml")
    assert card.candidate_paths(tmp_path / "data") == [tmp_path / "data" / "CollegeMsg.txt",
                                                       tmp_path / "samples" / "CollegeMsg.txt"]
