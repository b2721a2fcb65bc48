"""Shared fixtures: thread settings, seeds, and the location of ../shared (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CERTIFY_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the repo (or $CERTIFY_SHARED); tests using it skip when it is absent."""
    if not (SHARED / "vnncomp").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set CERTIFY_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
