"""A SYNTHETIC quantitative-phase cell set for the demo: nothing here is a real measurement.

Each image is an optical path delay (OPD) map in nanometres, float32, as an off-axis holographic
microscope gives it: OPD(x, y) = sum over compartments of (n_compartment - n_medium) * thickness.

* Cell in suspension: a flattened sphere (dome) of cytoplasm, irregular outline (Fourier modes).
* Nucleus: a denser dome inside it, off-centre; nucleoli: small, denser still.
* Texture: smoothed noise inside the cell (chromatin, organelles); background: camera noise plus a
  slight residual tilt.

Two classes differ the way healthy and cancer cells do in QPI studies (e.g. TOP-GAN, Rubin et al.
2019): cancer cells are larger, with a more irregular outline, a larger nucleus-to-cytoplasm ratio,
more nucleoli, coarser texture and a higher dry mass. The distributions overlap, so few labels do not
solve the task outright. The unlabelled pool is another cell type, sperm-like heads with a midpiece
and a tail (TOP-GAN pretrained its GAN on sperm cells).

Every image comes from its own seeded generator ``(seed, class, index)``: the same seed gives the
same files, and asking for more images never changes the first ones.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from fewlabel.fileio import atomic_write_bytes
from fewlabel.report.provenance import SYNTHETIC_MARKER, is_synthetic

__all__ = ["CLASSES", "SYNTHETIC_MARKER", "SyntheticDataset", "generate_dataset", "is_synthetic",
           "synth_cell", "synth_sperm"]

DATASET_NAME = "SYNTHETIC-qpi-cells"
CLASSES = ("healthy", "cancer")
N_MEDIUM = 1.337  # culture medium
ALPHA_UM3_PER_PG = 0.19  # specific refraction increment: dry mass = integral(OPD) / alpha


@dataclass(frozen=True)
class CellKind:
    """Distributions of one class (lengths in micrometres, refractive indices absolute)."""

    radius: tuple[float, float]          # mean, sd of the cell radius
    irregularity: float                  # sd of the outline's Fourier amplitudes (fraction of radius)
    nc_ratio: tuple[float, float]        # nucleus radius / cell radius: mean, sd
    nucleoli: float                      # Poisson mean of the nucleolus count
    n_cytoplasm: tuple[float, float]     # refractive index: mean, sd
    n_nucleus: tuple[float, float]
    texture_nm: float                    # amplitude of the intracellular texture
    texture_sigma_px: float              # its grain


KINDS = {
    "healthy": CellKind(radius=(5.6, 0.7), irregularity=0.025, nc_ratio=(0.46, 0.06), nucleoli=1.0,
                        n_cytoplasm=(1.360, 0.004), n_nucleus=(1.370, 0.004), texture_nm=4.0,
                        texture_sigma_px=1.6),
    "cancer": CellKind(radius=(6.6, 0.9), irregularity=0.06, nc_ratio=(0.58, 0.07), nucleoli=2.6,
                       n_cytoplasm=(1.362, 0.004), n_nucleus=(1.374, 0.004), texture_nm=7.0,
                       texture_sigma_px=1.0),
}


def _grid(size: int, pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) - (size - 1) / 2) * pixel_um
    return np.meshgrid(c, c, indexing="ij")


def _dome(rho: np.ndarray, height: float) -> np.ndarray:
    """Thickness of a flattened sphere at normalised radius ``rho`` (1 = outline)."""
    return height * np.sqrt(np.clip(1.0 - rho**2, 0.0, None))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Camera noise plus a residual tilt of the phase reference (nm)."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    tilt = rng.normal(0, 3.0) * xx + rng.normal(0, 3.0) * yy
    return (rng.normal(0, 1.5, (size, size)) + tilt).astype(np.float64)


def synth_cell(rng: np.random.Generator, kind: str, size: int = 64, pixel_um: float = 0.5
               ) -> tuple[np.ndarray, dict[str, float]]:
    """One cell's OPD map (nm, float32, (size, size)) and its ground-truth features."""
    p = KINDS[kind]
    y, x = _grid(size, pixel_um)
    cy, cx = rng.normal(0, 0.8, 2)  # not always centred, as in a flow cytometer's crops
    y, x = y - cy, x - cx
    r_mean = float(np.clip(rng.normal(*p.radius), 3.5, 0.42 * size * pixel_um))
    theta = np.arctan2(y, x)
    dist = np.hypot(y, x)
    # Irregular outline: a few low Fourier modes; their amplitude is the class's irregularity.
    outline = np.ones_like(theta)
    amps = rng.normal(0, p.irregularity, 5) / np.arange(1, 6) ** 0.5
    for k, a in enumerate(amps, start=2):
        outline += a * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = dist / (r_mean * outline)
    height = 2 * r_mean * rng.uniform(0.55, 0.7)  # cells flatten a little on the way through
    n_cyto = rng.normal(*p.n_cytoplasm)
    opd_um = (n_cyto - N_MEDIUM) * _dome(rho, height)
    # Nucleus: an off-centre, slightly elliptical denser dome.
    nc = float(np.clip(rng.normal(*p.nc_ratio), 0.25, 0.8))
    r_nuc = nc * r_mean
    off = rng.uniform(0, 0.5 * (1 - nc)) * r_mean
    phi = rng.uniform(0, 2 * np.pi)
    ny, nx = y - off * np.sin(phi), x - off * np.cos(phi)
    ell = rng.uniform(0.85, 1.15)
    rho_n = np.hypot(ny * ell, nx / ell) / r_nuc
    n_nuc = rng.normal(*p.n_nucleus)
    opd_um += (n_nuc - n_cyto) * _dome(rho_n, 2 * r_nuc * 0.8)
    # Nucleoli: small dense spheres inside the nucleus.
    n_nucleoli = int(min(rng.poisson(p.nucleoli), 6))
    for _ in range(n_nucleoli):
        a, rr = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.55) * r_nuc
        r_nl = rng.uniform(0.5, 0.9)
        rho_l = np.hypot(ny - rr * np.sin(a), nx - rr * np.cos(a)) / r_nl
        opd_um += (rng.uniform(1.385, 1.395) - n_nuc) * _dome(rho_l, 2 * r_nl)
    inside = rho < 1.0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), p.texture_sigma_px)
    texture *= p.texture_nm / (texture.std() + 1e-12)
    opd_nm = opd_um * 1000.0 + texture * inside * np.clip(_dome(rho, 1.0), 0, 1)
    dry_mass_pg = float(opd_um[inside].sum() * pixel_um**2 / ALPHA_UM3_PER_PG)
    opd_nm += _background(rng, size)
    features = {"radius_um": r_mean, "area_um2": float(inside.sum() * pixel_um**2),
                "irregularity": float(np.abs(amps).sum()), "nc_ratio": nc, "n_nucleoli": n_nucleoli,
                "dry_mass_pg": dry_mass_pg, "max_opd_nm": float(opd_nm.max())}
    return opd_nm.astype(np.float32), features


def synth_sperm(rng: np.random.Generator, size: int = 64, pixel_um: float = 0.5) -> np.ndarray:
    """A sperm-like cell (another cell type, for the unlabelled pool): OPD in nm, float32."""
    y, x = _grid(size, pixel_um)
    ang = rng.uniform(0, 2 * np.pi)
    ca, sa = np.cos(ang), np.sin(ang)
    u, v = x * ca + y * sa, -x * sa + y * ca  # u along the cell's axis
    u0 = rng.normal(-4.0, 1.0)
    # Head: a flat dense ellipsoid (~4.5 x 3 um), slightly pear-shaped.
    a, b = rng.uniform(2.0, 2.6), rng.uniform(1.3, 1.7)
    rho_h = np.hypot((u - u0) / a, v / (b * (1 + 0.15 * (u - u0) / a)))
    opd_um = (rng.uniform(1.40, 1.43) - N_MEDIUM) * _dome(rho_h, rng.uniform(1.0, 1.5))
    # Midpiece and tail: thin, gently waving cylinders behind the head.
    s = u - (u0 + a)
    amplitude, k, phase = rng.uniform(0.3, 1.2), rng.uniform(0.25, 0.5), rng.uniform(0, 2 * np.pi)
    wave = amplitude * np.sin(s * k + phase) * (s > 0) * s / 10  # the wave grows along the tail
    dv = np.abs(v - wave)
    mid = (s > 0) & (s < 5.0)
    tail = (s >= 5.0) & (s < rng.uniform(18, 30))
    opd_um += mid * (0.035 * _dome(dv / 0.5, 0.9))
    opd_um += tail * (0.03 * _dome(dv / 0.35, 0.5))
    opd_nm = opd_um * 1000.0 + _background(rng, size)
    return opd_nm.astype(np.float32)


@dataclass
class SyntheticDataset:
    """Where the generated set lies: class folders under ``labelled``, the pool in ``unlabelled``."""

    root: Path
    labelled: Path
    unlabelled: Path
    features_csv: Path
    n_per_class: int
    n_unlabelled: int
    seed: int


README = """SYNTHETIC DATA - NOT A MEASUREMENT
===================================
Generated by fewlabel.demo.synthetic (seed {seed}) for `fewlabel demo`.

Each .tif is a float32 optical path delay (OPD) map in nanometres, {size}x{size} px at {pixel_um} um/px,
simulated as (refractive index - medium) x thickness of a cell, its nucleus and nucleoli, plus texture,
camera noise and a residual tilt. No real cell was imaged.

labelled/healthy/   {n} SYNTHETIC healthy cells
labelled/cancer/    {n} SYNTHETIC cancer cells (larger, more irregular, larger nucleus-to-cytoplasm
                    ratio, more nucleoli, coarser texture, higher dry mass; the classes overlap)
unlabelled/         {m} SYNTHETIC sperm-like cells (another cell type, for GAN/SSL pretraining)
cell_features.csv   the ground-truth features of each labelled cell

Results obtained on this set say that the software runs, not how well it works on real cells.
"""


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write, skipped when the file already holds these bytes: a re-run leaves the files (and
    their mtimes, part of the data fingerprint) untouched, so ``fewlabel demo`` resumes its run."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    atomic_write_bytes(path, data)


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array.astype(np.float32), photometric="minisblack")
    _write_if_changed(path, buf.getvalue())


def generate_dataset(out_dir: str | Path, n_per_class: int = 80, n_unlabelled: int = 300, size: int = 64,
                     pixel_um: float = 0.5, seed: int = 0) -> SyntheticDataset:
    """Write the SYNTHETIC set under ``out_dir/SYNTHETIC-qpi-cells`` (float32 TIFF; see README.txt)."""
    root = Path(out_dir) / DATASET_NAME
    labelled, unlabelled = root / "labelled", root / "unlabelled"
    rows = []
    for k, name in enumerate(CLASSES):
        folder = labelled / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, k, i])
            image, feats = synth_cell(rng, name, size=size, pixel_um=pixel_um)
            file = folder / f"SYNTHETIC_{name}_{i:04d}.tif"
            _write_tiff(file, image)
            rows.append({"file": file.relative_to(root).as_posix(), "class": name, **feats})
    unlabelled.mkdir(parents=True, exist_ok=True)
    for i in range(n_unlabelled):
        rng = np.random.default_rng([seed, len(CLASSES), i])
        image = synth_sperm(rng, size=size, pixel_um=pixel_um)
        _write_tiff(unlabelled / f"SYNTHETIC_sperm_{i:04d}.tif", image)
    features_csv = root / "cell_features.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["file", "class"])
    writer.writeheader()
    writer.writerows(rows)
    _write_if_changed(features_csv, buf.getvalue().encode("utf-8"))
    readme = README.format(seed=seed, size=size, pixel_um=pixel_um, n=n_per_class, m=n_unlabelled)
    _write_if_changed(root / "README.txt", readme.encode("utf-8"))
    ds = SyntheticDataset(root=root, labelled=labelled, unlabelled=unlabelled, features_csv=features_csv,
                          n_per_class=n_per_class, n_unlabelled=n_unlabelled, seed=seed)
    marker = {"synthetic": True, "generator": "fewlabel.demo.synthetic", "seed": seed, "size": size,
              "pixel_um": pixel_um, "units": "OPD in nm", "classes": list(CLASSES),
              "note": "SYNTHETIC data: results say the software runs, not how well it works on real cells"}
    _write_if_changed(root / SYNTHETIC_MARKER, json.dumps(marker, indent=2).encode("utf-8"))
    return ds
