"""Benchmark: the full learning curve on BCCD white blood cells, TOP-GAN style (few labelled WBC crops,
a larger unlabelled pool of another cell type: RBC crops).

    .venv/bin/python benchmarks/curve_bccd.py [--quick]

Protocol (../shared/anchors.md, section 6): basophil dropped (2 images); crops grouped by their
``BloodImage_XXXXX`` smear id so no smear is on both sides of the split; test = 25% of each class
(monocyte: 5 of 20); the unlabelled RBC pool minus every crop from a test smear feeds GAN / SSL
pretraining and FixMatch; images at 64 px (the RBC crops' size, a DCGAN's). Sizes stop at 10: the
monocyte pool has 15 images. Prints median [IQR] ROC-AUC and accuracy per strategy × size and the
wall time.
"""

from __future__ import annotations

import sys

from _curve_common import parser, run

NAME = "bccd"
GROUP = r"(BloodImage_\d+)"


def main() -> int:
    args = parser(__doc__, NAME, strategies="scratch,imagenet,gan,ssl,semi", sizes="1,2,5,10",
                  repeats=5).parse_args()
    return run(args, NAME, "bccd_wbc_fewshot", subdir="labelled", unlabelled="unlabelled_rbc",
               group_pattern=GROUP, drop_classes=["basophil"], test_size=0.25, image_size=64,
               quick={"strategies": "scratch,imagenet", "sizes": "1,2", "repeats": 1, "image_size": 32})


if __name__ == "__main__":
    sys.exit(main())
