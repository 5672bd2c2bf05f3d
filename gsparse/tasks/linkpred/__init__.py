"""Link prediction on temporal graphs: splits, negatives, walk features, PyG models, training."""
from gsparse.tasks.linkpred.train import LinkPredConfig, train_link_prediction

__all__ = ["LinkPredConfig", "train_link_prediction"]
