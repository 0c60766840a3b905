"""What ``benchmarks/label_need_calibration.py`` measured of the labels-needed interval on
simulated curves with a known answer; written by that script (``--write``), quoted by the report.
Regenerate it with ``COMMAND`` whenever the estimator changes (a test checks that the estimator's
constants match those it was measured with)."""

from __future__ import annotations

COMMAND = "benchmarks/label_need_calibration.py --write"
SEEDS = (0, 1)
CASES = 864  # per family and strength, over the seeds
N_BOOT = 300
RATIOS = (1.5, 2.5, 4.0)  # true need / largest size run
# the estimator's constants when measured
INTERVAL_LEVEL = 0.9
LOWER_TAIL = 0.02
MAX_EXTRAPOLATION = 5.0
# per true-curve family and strength, how many answers ended each way (curve_simulation.outcome),
# and how many the previous lower end (the symmetric 5th percentile) missed below
ROWS: tuple[dict[str, str | float | int], ...] = (
    {"family": "power law", "strength": 0.0, "cases": 864,
     "covered": 176, "open": 627, "missed low": 27, "missed high": 33, "no interval": 1,
     "missed low, 5th percentile": 69},
    {"family": "late start", "strength": 1.0, "cases": 864,
     "covered": 269, "open": 445, "missed low": 103, "missed high": 40, "no interval": 7,
     "missed low, 5th percentile": 188},
    {"family": "late start", "strength": 2.0, "cases": 864,
     "covered": 204, "open": 338, "missed low": 287, "missed high": 19, "no interval": 16,
     "missed low, 5th percentile": 397},
    {"family": "late start", "strength": 4.0, "cases": 864,
     "covered": 115, "open": 238, "missed low": 461, "missed high": 2, "no interval": 48,
     "missed low, 5th percentile": 546},
    {"family": "slowing", "strength": 0.2, "cases": 864,
     "covered": 128, "open": 673, "missed low": 37, "missed high": 25, "no interval": 1,
     "missed low, 5th percentile": 81},
    {"family": "slowing", "strength": 0.4, "cases": 864,
     "covered": 79, "open": 714, "missed low": 45, "missed high": 23, "no interval": 3,
     "missed low, 5th percentile": 81},
    {"family": "slowing", "strength": 0.8, "cases": 864,
     "covered": 31, "open": 751, "missed low": 41, "missed high": 25, "no interval": 16,
     "missed low, 5th percentile": 72},
)
