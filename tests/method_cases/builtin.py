"""Built-in methods not covered by test_zero's training configs: SET and static masks."""
from tests.method_cases import MethodCase

CASES = [
    MethodCase("set", recipe={"method": "set", "sparsity": 0.8, "distribution": "erk", "seed": 3,
                              "schedule": {"update_interval": 10, "drop_fraction": 0.3, "last_update_step": 50}},
               steps=60, resume_at=25),
    MethodCase("static", recipe={"method": "static", "sparsity": 0.8, "distribution": "uniform", "seed": 3},
               steps=30, resume_at=None),
]
