"""``fewlabel demo``: the main job on an embedded SYNTHETIC quantitative-phase cell set.

    from fewlabel.demo import run_demo
    run_demo("fewlabel-demo")        # -> fewlabel-demo/run/report.html
"""

from fewlabel.demo.run import DemoResult, run_demo
from fewlabel.demo.synthetic import generate_dataset, is_synthetic

__all__ = ["DemoResult", "generate_dataset", "is_synthetic", "run_demo"]
