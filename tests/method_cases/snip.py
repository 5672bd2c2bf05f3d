from tests.method_cases import MethodCase
import gsparse.methods.snip  # noqa: F401  (registers the method)

CASES = [
    MethodCase("snip-one-batch", recipe={"method": "snip", "sparsity": 0.8, "distribution": "erk", "seed": 3},
               steps=100, resume_at=50),
    MethodCase("snip-three-batches-gradient", recipe={
        "method": "snip", "sparsity": 0.8, "distribution": "uniform", "seed": 3,
        "method_args": {"score_batches": 3, "score_accumulation": "gradient"}}, steps=100, resume_at=2),
]
