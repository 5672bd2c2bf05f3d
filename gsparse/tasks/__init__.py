"""Tasks the training runner (:mod:`gsparse.training`) trains: ``linkpred`` (link prediction on
temporal graphs, with the graph loaders and dataset cards of ``graphs``)."""
