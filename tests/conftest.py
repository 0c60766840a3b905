"""Test set-up shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two xdist workers on two cores: more than one torch thread each makes both crawl (deps-probe.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# "auto" precision is bf16 on a CPU with native bf16: pinned off, so every machine gives the same
# numbers; the tests of the bf16 path turn it on themselves.
os.environ["FEWLABEL_NATIVE_BF16"] = "0"
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo; tests that need it skip cleanly when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def shared_datasets(shared_dir: Path) -> Path:
    path = shared_dir / "datasets"
    if not path.is_dir():
        pytest.skip("../shared/datasets is not present")
    return path
