"""Temporal graphs: edge-list loaders (``io``) and the dataset cards of ``cards/*.yaml`` (``datasets``)."""
from gsparse.tasks.graphs.datasets import (DATA_DIR_ENV, DatasetCard, DatasetError, check_dataset_counts, dataset_card,
                                     list_datasets, load_dataset, read_card, resolve_data_dir)
from gsparse.tasks.graphs.io import (CSV_ROLES, FORMAT_ALIASES, FORMATS, GraphFormatError, TemporalEdges,
                                     detect_format, load_edges, remap_nodes)

__all__ = ["CSV_ROLES", "DATA_DIR_ENV", "DatasetCard", "DatasetError", "FORMAT_ALIASES", "FORMATS", "GraphFormatError",
           "TemporalEdges", "check_dataset_counts", "dataset_card", "detect_format", "list_datasets", "load_dataset",
           "load_edges", "read_card", "remap_nodes", "resolve_data_dir"]
