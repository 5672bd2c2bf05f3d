"""Compare dense, prune-from-dense (ADMM, GMP) and sparse-from-scratch training (SET, RigL, DST-EE)
on link prediction, as in the DST-EE paper's Tables 3-4 and Figure 3:

    python scripts/compare.py                                # the paper's grid
    python scripts/compare.py --epochs-scale 0.1 --seeds 0   # a quick look
    python scripts/compare.py --only-table                   # rebuild table and plots

`python scripts/compare.py --help` lists every option.
"""
import sys

from gsparse.tasks.linkpred.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
