"""Benchmark: pretraining views before and after they moved onto ``fewlabel.data.augment``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/views_before_after.py --baseline ../wt_old \
        [--methods ssl,gan] [--steps 300] [--seeds 0,1] [--image-size 32] [--sizes 10,20] [--draws 5]

``--baseline`` is a checkout of the commit before the change (``git worktree add --detach ../wt_old
<commit>``); its ``src/fewlabel/pretrain/views.py`` (global-RNG, zero-padding views) is loaded by path
and composed as that commit's SimCLR and GAN did. Everything else runs on this checkout's code, in one
process, on the same seeds: only the views differ between the arms.

Data: PBC 8-class (RGB blood cells), 100 test images per class held out; SimCLR and GAN pretrain on
the pool (never a test image) for ``--steps`` steps; then a linear probe (logistic regression on the
frozen encoder's standardised pooled features) on ``--draws`` labelled draws of each size from the
pool, scored on the (class-balanced) test set. A randomly initialised encoder is the floor. Prints
test accuracy as median [IQR] over (pretraining seed x draw), and pretraining seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from fewlabel.data import splits
from fewlabel.pipeline import prepare_data
from fewlabel.pretrain import gan, ssl
from fewlabel.pretrain.common import PretrainConfig
from fewlabel.training.finetune import frozen_features

from _common import dataset_or_exit, med_iqr, print_table


def load_baseline_views(checkout: Path) -> ModuleType:
    path = checkout / "src" / "fewlabel" / "pretrain" / "views.py"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; --baseline must be a checkout from before the change")
    spec = importlib.util.spec_from_file_location("baseline_views", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def baseline_views(views: ModuleType) -> Iterator[None]:
    """SimCLR's and the GAN's views as the baseline composed them (its own functions, torch's global
    generator); the generator the new code hands them is ignored."""

    class OldSimCLRViews(ssl.SimCLRViews):
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            x = views.random_resized_crop(x, self.crop_scale)
            (x,) = views.random_dihedral(x)
            x = views.random_blur(x, self.blur_p)
            x = views.random_noise(x, self.noise_std)
            x = views.random_intensity(x, self.intensity, self.intensity)
            if self.colour_jitter and x.shape[1] > 1:
                x = views.random_intensity(x, 0.3, 0.3, per_channel=True)
            return x

    class OldDiffAugment(gan.DiffAugment):
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            (x,) = views.random_dihedral(x)
            x = views.random_translate(x, 0.125)
            return views.random_cutout(x, 0.5)

    saved = ssl.SimCLRViews, gan.DiffAugment
    ssl.SimCLRViews, gan.DiffAugment = OldSimCLRViews, OldDiffAugment  # type: ignore[misc]
    try:
        yield
    finally:
        ssl.SimCLRViews, gan.DiffAugment = saved  # type: ignore[misc]


def probe_scores(encoder: torch.nn.Module, data, sizes: list[int], draws: int,
                 test: tuple[np.ndarray, np.ndarray]) -> dict[int, list[float]]:
    x_test, y_test = test
    f_test = frozen_features(encoder, x_test).numpy()
    out: dict[int, list[float]] = {}
    for n in sizes:
        for draw in range(draws):
            ids = splits.draw_labelled(data.catalog, data.pool_ids, n, seed=1000 + draw)
            x, y = data.arrays(ids)
            f = frozen_features(encoder, x).numpy()
            mean, std = f.mean(0), f.std(0) + 1e-6  # from the labelled images only
            clf = LogisticRegression(max_iter=2000, C=1.0).fit((f - mean) / std, y)
            pred = clf.predict((f_test - mean) / std)
            out.setdefault(n, []).append(float(accuracy_score(y_test, pred)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, required=True, help="checkout of the commit before the change")
    ap.add_argument("--methods", default="ssl,gan")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--sizes", default="10,20")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    old_views = load_baseline_views(args.baseline)
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    data_dir = dataset_or_exit("pbc_leukocytes_8class")
    t0 = time.perf_counter()
    data = prepare_data(data_dir, test_size=100, seed=0, image_size=args.image_size)
    pool = data.pretrain_inputs("pool").images
    test = data.test_arrays
    print(f"data: pool {pool.shape}, test {len(test[1])} images, {data.num_classes} classes "
          f"(loaded in {time.perf_counter() - t0:.1f}s)", flush=True)

    methods = args.methods.split(",")
    if set(methods) - {"ssl", "gan"}:
        raise SystemExit(f"--methods: ssl and/or gan, not {args.methods!r}")
    arms = [("random init", None, None)] + [
        (f"{method} {code}", method, code) for method in methods for code in ("before", "after")]
    scores: dict[str, dict[int, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    for label, method, code in arms:
        for seed in seeds:
            torch.manual_seed(seed)
            cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, log_every=50, seed=seed,
                                 progress=False, device="cpu")
            t = time.perf_counter()
            if method is None:
                encoder = ssl.default_encoder(pool.shape[1], 2)
            else:
                trainer = ssl.pretrain_ssl if method == "ssl" else gan.pretrain_gan
                with baseline_views(old_views) if code == "before" else contextlib.nullcontext():
                    encoder, _ = trainer(pool, cfg)
            seconds.setdefault(label, []).append(time.perf_counter() - t)
            for n, s in probe_scores(encoder, data, sizes, args.draws, test).items():
                scores.setdefault(label, {}).setdefault(n, []).extend(s)
            last = scores[label][sizes[-1]][-args.draws:]
            print(f"  {label} seed {seed}: {seconds[label][-1]:.0f}s, probe acc at n={sizes[-1]} "
                  f"{np.median(last):.3f}", flush=True)
    rows = []
    for label, _, _ in arms:
        for n in sizes:
            rows.append([label, str(n), med_iqr(scores[label][n]), f"{np.mean(seconds[label]):.0f}"])
    print()
    print(f"{args.steps} pretraining steps, batch {args.batch_size}, {args.image_size} px, seeds {seeds}, "
          f"{args.draws} probe draws per size")
    print_table(["encoder", "n/class", "probe accuracy med [IQR]", "pretrain s"], rows)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
