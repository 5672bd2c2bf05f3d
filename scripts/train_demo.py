"""Launcher entry for the demo, e.g.
    deepspeed --num_accelerators 2 scripts/train_demo.py --deepspeed_config ds_configs/zero2.json
(the same as `gsparse demo ...` in one process)."""
import sys

from gsparse.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
