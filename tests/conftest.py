"""Shared fixtures: the ../shared folder (golden fixture, real demo sources).

Tests that need ../shared skip with a reason when it is absent, and fail instead when
REQUIRE_SHARED=1 (as .ci/run sets), so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("PERCEPTGUIDE_SHARED", REPO_ROOT.parent / "shared"))


def require_shared(relative: str) -> Path:
    """Path of ``relative`` inside ../shared; skip (or fail under REQUIRE_SHARED=1) if absent."""
    path = SHARED_DIR / relative
    if not path.exists():
        reason = f"{path} is absent (the ../shared folder beside the repo)"
        if os.environ.get("REQUIRE_SHARED") == "1":
            pytest.fail(f"REQUIRE_SHARED=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests: on 2 cores a second thread mostly
    waits at barriers, and per-sample transforms run on one thread in data workers anyway."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def golden() -> dict:
    """The official-code fidelity fixture ../shared/golden/perceptguide_tiny.pt."""
    import torch

    return torch.load(require_shared("golden/perceptguide_tiny.pt"), weights_only=False)
