"""Link predictors: a GNN encoder (any of :data:`ENCODERS`, PyG convolutions) or precomputed node
features, and the two fully connected layers the DST-EE paper sparsifies (``predictor.fc1`` and
``predictor.fc2``).

The predictor's input is ``[h_src, h_dst]``, optionally followed by per-pair structural features
(:meth:`gsparse.tasks.linkpred.baselines.History.pair_features`: how often the pair occurred before,
common neighbours, Adamic-Adar, both degrees and both endpoints' recent activity, all computed from
the edges known before the pairs' slice), so the head can weigh what the no-learning heuristics know against the embeddings.
"""
from __future__ import annotations

import torch

PAIR_FEATURES = 7  # width of History.pair_features


def _conv_builders() -> dict:
    """Encoder name -> ``(in, out) -> conv``: the PyG convolutions that run on a sparse CSR adjacency."""
    import torch_geometric.nn as gnn

    def gin(inputs: int, outputs: int):
        return gnn.GINConv(torch.nn.Sequential(torch.nn.Linear(inputs, outputs), torch.nn.ReLU(),
                                               torch.nn.Linear(outputs, outputs)))

    return {"sage": gnn.SAGEConv, "gcn": gnn.GCNConv, "graphconv": gnn.GraphConv, "gat": gnn.GATConv,
            "gatv2": gnn.GATv2Conv, "gin": gin, "transformer": gnn.TransformerConv,
            "resgated": gnn.ResGatedGraphConv, "tag": gnn.TAGConv, "sg": gnn.SGConv, "le": gnn.LEConv,
            "general": gnn.GeneralConv, "cluster_gcn": gnn.ClusterGCNConv}


ENCODERS = ("sage", "gcn", "graphconv", "gat", "gatv2", "gin", "transformer", "resgated", "tag", "sg", "le",
            "general", "cluster_gcn")


class PairPredictor(torch.nn.Module):
    """Two fully connected layers on a pair feature: ``fc2(relu(fc1(x)))`` -> one logit."""

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.fc1 = torch.nn.Linear(in_features, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, pair_features: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(pair_features))).squeeze(-1)


class _PairModel(torch.nn.Module):
    def _predict(self, nodes: torch.Tensor, pairs: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        parts = [nodes[pairs[:, 0]], nodes[pairs[:, 1]]]
        if self.pair_features:
            if features is None:
                raise ValueError("this model was built with pair_features: pass the pairs' structural features")
            parts.append(features.to(nodes.dtype))
        return self.predictor(torch.cat(parts, dim=1))


class GNNLinkPredictor(_PairModel):
    """Learned node embeddings -> two PyG message-passing layers over the known graph (full batch) ->
    the pair predictor on ``[h_src, h_dst(, pair features)]``."""

    def __init__(self, num_nodes: int, encoder: str = "sage", embedding_dim: int = 32, hidden: int = 64,
                 predictor_hidden: int = 128, pair_features: bool = False, dropout: float = 0.0):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder '{encoder}' is not one of: {', '.join(ENCODERS)}")
        build = _conv_builders()[encoder]
        self.embedding = torch.nn.Embedding(num_nodes, embedding_dim)
        self.conv1 = build(embedding_dim, hidden)
        self.conv2 = build(hidden, hidden)
        self.dropout = dropout
        self.pair_features = pair_features
        self.predictor = PairPredictor(2 * hidden + (PAIR_FEATURES if pair_features else 0), predictor_hidden)

    def encode(self, adjacency: torch.Tensor) -> torch.Tensor:
        """Node representations; ``adjacency`` is an ``edge_index`` or a sparse (CSR) adjacency."""
        hidden = torch.relu(self.conv1(self.embedding.weight, adjacency))
        hidden = torch.nn.functional.dropout(hidden, self.dropout, self.training)
        return self.conv2(hidden, adjacency)

    def forward(self, pairs: torch.Tensor, adjacency: torch.Tensor, features: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self._predict(self.encode(adjacency), pairs, features)


class FeatureLinkPredictor(_PairModel):
    """The paper's pipeline: fixed pair features (two 8-d skip-gram node embeddings from temporal
    walks) -> MLP 16 -> 128 -> 1."""

    def __init__(self, node_features: torch.Tensor, predictor_hidden: int = 128, pair_features: bool = False):
        super().__init__()
        self.register_buffer("node_features", node_features.float(), persistent=False)
        self.pair_features = pair_features
        width = 2 * node_features.shape[1] + (PAIR_FEATURES if pair_features else 0)
        self.predictor = PairPredictor(width, predictor_hidden)

    def forward(self, pairs: torch.Tensor, adjacency: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        return self._predict(self.node_features, pairs, features)
