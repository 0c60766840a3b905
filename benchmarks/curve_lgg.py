"""Benchmark: the full learning curve on LGG brain MRI (2D slices, grade 1 vs 2), Wong et al. style:
does segmentation pretraining on the tumour masks help when grade labels are few?

    .venv/bin/python benchmarks/curve_lgg.py [--quick] [--3d]

Protocol (../shared/anchors.md, section 6): split by patient (``TCGA_<inst>_<patient>_<date>``);
test = 40% of each class; sizes count PATIENTS per class (all their slices, up to 4); masks from the
images/ + masks/ layout, pretraining sees the pool's masks only. Every baseline in the anchors sits
at chance here: a result counts only with a CI that excludes 0.5. Prints median [IQR] ROC-AUC and
accuracy per strategy × size (slice level) and the wall time.

``--3d``: the same patients as FLAIR volumes (``lgg_mri_3d``, NIfTI), one volume per patient, resized
to a cube (``--image-size``, default 32); strategies scratch and segmentation (no ImageNet in 3D).
"""

from __future__ import annotations

import sys

from _curve_common import parser, run

NAME = "lgg"
GROUP = r"(TCGA_[A-Z0-9]+_[A-Z0-9]+_\d+)_s\d+"


GROUP_3D = r"(TCGA_[A-Z0-9]+_[A-Z0-9]+)"


def main() -> int:
    three_d = "--3d" in sys.argv
    if three_d:
        sys.argv.remove("--3d")
        args = parser(__doc__, NAME + "3d", strategies="scratch,segmentation", sizes="2,5,10,20",
                      repeats=5).parse_args()
        if args.image_size is None:
            args.image_size = 32
        return run(args, NAME + "3d", "lgg_mri_3d", group_pattern=GROUP_3D, count="groups", test_size=0.4,
                   quick={"strategies": "scratch", "sizes": "2", "repeats": 1, "image_size": 16})
    args = parser(__doc__, NAME, strategies="scratch,imagenet,segmentation,ssl", sizes="1,2,5,10,20",
                  repeats=5).parse_args()
    return run(args, NAME, "lgg_mri_2d", group_pattern=GROUP, count="groups", test_size=0.4,
               quick={"strategies": "scratch,imagenet", "sizes": "1,2", "repeats": 1, "image_size": 32})


if __name__ == "__main__":
    sys.exit(main())
