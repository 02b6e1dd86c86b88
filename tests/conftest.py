"""Shared constants and fixtures: the repo root, the tiny test network and its checkpoints, ../shared.

Tests that need ../shared skip with a reason when it is absent, and fail instead when
REQUIRE_SHARED=1 (as .ci/run sets), so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "data" / "demo"
# the network of tests/data/tiny_model.yaml: ~0.2 M parameters, any input a multiple of 32
TINY_NET: dict = {"embed_dim": 12, "encoder_depths": (1, 1, 1, 1), "decoder_depths": (1, 1, 1, 1), "window_size": 2}
TINY_SIZE = 64
SHARED_DIR = Path(os.environ.get("PERCEPTGUIDE_SHARED", REPO_ROOT.parent / "shared"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs one worker per core: a second thread in a worker or in the commands it starts
    # would oversubscribe the cores (OpenMP threads spinning at barriers)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


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


def tiny_network(seed: int = 0, **overrides):
    """The tiny test network (``TINY_NET``, then ``overrides``), with seeded initial weights."""
    import torch

    from bundle.networks import PerceptGuide

    torch.manual_seed(seed)
    return PerceptGuide(**{"img_size": TINY_SIZE, **TINY_NET, **overrides})


def write_checkpoint(path: Path, network=None, vocabulary=None, seg_classes=None, cls_classes=None) -> Path:
    """A self-describing bundle checkpoint of ``network`` (default: the tiny one) at ``path``."""
    from bundle.networks import ModelDescription, save_checkpoint
    from bundle.prompts import DEFAULT_VOCABULARY, PROMPT_KEYS

    network = network if network is not None else tiny_network()
    vocabulary = vocabulary or DEFAULT_VOCABULARY
    arguments = network.arguments
    description = ModelDescription(
        arguments=arguments,
        vocabulary={key: list(vocabulary.names(key)) for key in PROMPT_KEYS},
        seg_classes=seg_classes or ["background"] + [f"object{i}" for i in range(1, arguments["seg_classes"])],
        cls_classes=cls_classes or [f"class{i}" for i in range(arguments["cls_classes"])],
        image_size=arguments["img_size"],
    )
    return save_checkpoint(path, network, description)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """A self-describing checkpoint of the untrained tiny network."""
    return write_checkpoint(tmp_path / "tiny.pt")
