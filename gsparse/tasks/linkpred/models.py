"""Link predictors: a GNN encoder (or precomputed features) and the two fully connected layers
the DST-EE paper sparsifies (``predictor.fc1`` and ``predictor.fc2``)."""
from __future__ import annotations

import torch

ENCODERS = ("sage", "gcn")


class PairPredictor(torch.nn.Module):
    """Two fully connected layers on a pair feature: ``fc2(relu(fc1(x)))`` -> one logit."""

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.fc1 = torch.nn.Linear(in_features, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, pair_features: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(pair_features))).squeeze(-1)


class GNNLinkPredictor(torch.nn.Module):
    """Learned node embeddings -> two PyG message-passing layers over the training graph (full
    batch) -> the pair predictor on ``[h_src, h_dst]``."""

    def __init__(self, num_nodes: int, encoder: str = "sage", embedding_dim: int = 32, hidden: int = 64,
                 predictor_hidden: int = 128):
        super().__init__()
        from torch_geometric.nn import GCNConv, SAGEConv

        if encoder not in ENCODERS:
            raise ValueError(f"encoder '{encoder}' is not one of: {', '.join(ENCODERS)}")
        layer = SAGEConv if encoder == "sage" else GCNConv
        self.embedding = torch.nn.Embedding(num_nodes, embedding_dim)
        self.conv1 = layer(embedding_dim, hidden)
        self.conv2 = layer(hidden, hidden)
        self.predictor = PairPredictor(2 * hidden, predictor_hidden)

    def encode(self, adjacency: torch.Tensor) -> torch.Tensor:
        """Node representations; ``adjacency`` is an ``edge_index`` or a sparse (CSR) adjacency."""
        hidden = torch.relu(self.conv1(self.embedding.weight, adjacency))
        return self.conv2(hidden, adjacency)

    def forward(self, pairs: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        nodes = self.encode(adjacency)
        return self.predictor(torch.cat([nodes[pairs[:, 0]], nodes[pairs[:, 1]]], dim=1))


class FeatureLinkPredictor(torch.nn.Module):
    """The paper's pipeline: fixed pair features (two 8-d skip-gram node embeddings from temporal
    walks) -> MLP 16 -> 128 -> 1."""

    def __init__(self, node_features: torch.Tensor, predictor_hidden: int = 128):
        super().__init__()
        self.register_buffer("node_features", node_features.float(), persistent=False)
        self.predictor = PairPredictor(2 * node_features.shape[1], predictor_hidden)

    def forward(self, pairs: torch.Tensor, adjacency: torch.Tensor | None = None) -> torch.Tensor:
        return self.predictor(torch.cat([self.node_features[pairs[:, 0]], self.node_features[pairs[:, 1]]], dim=1))
