from tests.method_cases import MethodCase
import gsparse.methods.acdc  # noqa: F401  (registers the method)

# One step per "epoch": dense 1-10, compressed 11-20, 31-40, 51-60, dense 21-30, 41-50 and 61-80
# (the last decompressed phase), compressed fine-tune from 81. Resume inside a compressed phase
# (per layer) and just before a compression (global).
_PHASES = {"steps_per_epoch": 1, "total_epochs": 100, "warmup_epochs": 10, "compressed_epochs": 10,
           "decompressed_epochs": 10, "last_decompressed_epochs": 15, "finetune_epochs": 20}

CASES = [
    MethodCase("acdc-layer-uniform", recipe={
        "method": "acdc", "sparsity": 0.8, "distribution": "uniform", "seed": 3,
        "method_args": {**_PHASES, "selection": "layer"}}, steps=100, resume_at=35),
    MethodCase("acdc-global-erk", recipe={
        "method": "acdc", "sparsity": 0.8, "distribution": "erk", "seed": 3,
        "method_args": {**_PHASES, "selection": "global"}}, steps=100, resume_at=50),
]
