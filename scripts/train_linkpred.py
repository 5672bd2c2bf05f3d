"""Train a link predictor on a temporal graph, dense or sparse, in one process or under DeepSpeed:

    python scripts/train_linkpred.py --recipe recipes/linkpred_dst_ee.yaml
    deepspeed --num_accelerators 2 scripts/train_linkpred.py --deepspeed_config ds_configs/zero2.json \\
        --recipe recipes/linkpred_dst_ee.yaml

`python scripts/train_linkpred.py --help` lists every option.
"""
import sys

from gsparse.tasks.linkpred.cli import main

if __name__ == "__main__":
    sys.exit(main())
