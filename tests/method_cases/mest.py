from tests.method_cases import MethodCase
import gsparse.methods.mest  # noqa: F401  (registers the method)

CASES = [
    MethodCase("mest-em", recipe={
        "method": "mest", "sparsity": 0.8, "distribution": "erk", "seed": 3,
        "schedule": {"update_interval": 10},
        "method_args": {"mode": "em", "mutation_fraction": 0.1, "decay_factor": 0.5, "decay_milestones": [40, 70],
                        "stop_step": 90, "grad_coefficient": 0.5}}, steps=100, resume_at=45),
    MethodCase("mest-ems", recipe={
        "method": "mest", "sparsity": 0.8, "distribution": "uniform", "seed": 3,
        "schedule": {"update_interval": 10},
        "method_args": {"mode": "ems", "mutation_fraction": 0.1, "decay_factor": 0.5, "decay_milestones": [60],
                        "stop_step": 90, "grad_coefficient": 1.0}}, steps=100, resume_at=55),
]
