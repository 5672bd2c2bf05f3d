"""OptG at ZeRO-2/3: scores of pruned weights too, dormant values restored on revival, global sort."""
import gsparse.methods.optg  # noqa: F401  (registers the method)
from tests.method_cases import MethodCase

CASES = [
    MethodCase("optg-global-sigmoid", recipe={"method": "optg", "sparsity": 0.8, "distribution": "erk", "seed": 3,
                                              "method_args": {"steps_per_epoch": 20, "epochs": 5, "alpha": 1.0}},
               steps=100, resume_at=50),
]
