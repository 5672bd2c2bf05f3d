from tests.method_cases import MethodCase
import gsparse.methods.autosparse  # noqa: F401  (registers the method)

CASES = [
    # alpha decays by sigmoid-cosine per 10-step epoch and is 0 from epoch 7 (step 71); the save at
    # step 45 is mid-epoch, so resuming must restore the method's step count (alpha) exactly.
    MethodCase("annealed_then_zero", recipe={
        "method": "autosparse", "sparsity": 0.8, "distribution": "uniform", "seed": 3,
        "method_args": {"steps_per_epoch": 10, "epochs": 10, "alpha0": 0.9, "alpha_decay": "sigmoid_cosine",
                        "alpha_zero_epoch": 7}},
        steps=100, resume_at=45),
    # the fixed-budget variant (TopKAST* + GA): forward keeps the top |w| of each layer's ERK budget
    MethodCase("topkast_ga", recipe={
        "method": "topkast_ga", "sparsity": 0.8, "distribution": "erk", "seed": 3,
        "method_args": {"steps_per_epoch": 10, "epochs": 6, "alpha0": 0.9, "alpha_zero_epoch": 4}},
        steps=60, resume_at=25),
]
