"""Benchmark: the full learning curve on PBC 8-class leukocytes (../shared/anchors.md, section 6).

    .venv/bin/python benchmarks/curve_pbc.py [--quick] [--executor ray --gpus-per-cell 0.25]

Protocol: one fixed test set of 100 images per class (the rest, 100 per class, is the pool); per
repeat one nested draw of n labelled images per class, shared by all strategies; no separate
unlabelled pool, so GAN / SSL pretraining and FixMatch use the pool's images with labels ignored.
Resumable: re-run the same command to continue. Prints median [IQR] ROC-AUC and accuracy per
strategy × size and the wall time. Reports stay in runs/ (not committed).
"""

from __future__ import annotations

import sys

from _curve_common import parser, run

NAME = "pbc"


def main() -> int:
    args = parser(__doc__, NAME, strategies="scratch,imagenet,gan,ssl,semi", sizes="1,2,5,10,20,50,100",
                  repeats=5).parse_args()
    return run(args, NAME, "pbc_leukocytes_8class", test_size=100,
               quick={"strategies": "scratch,imagenet", "sizes": "1,2", "repeats": 1, "image_size": 32,
                      "test_size": 10})


if __name__ == "__main__":
    sys.exit(main())
