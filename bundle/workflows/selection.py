"""Which weights ``models/model.pt`` holds after training: the best validated, the last or their average.

The official recipe keeps the checkpoint of the best validation score (mean of segmentation
Dice and classification AUC). On a validation split as small as the demo's that score is noisy
enough to pick a poor early epoch, so the CPU setting keeps the last weights or their moving
average (:mod:`bundle.workflows.averaging`; docs/results.md). The others go beside it.
"""

from __future__ import annotations

__all__ = ["MODEL_SELECTIONS", "average_model_filename", "best_model_filename", "last_model_filename"]

MODEL_SELECTIONS = ("best", "last", "ema")


def _checked(selection: str) -> str:
    if selection not in MODEL_SELECTIONS:
        raise ValueError(f"model_selection must be one of {list(MODEL_SELECTIONS)}, got '{selection}'.")
    return selection


def best_model_filename(selection: str) -> str:
    """Where the best-validated weights go: ``model.pt`` for ``"best"``, else ``model_best.pt``."""
    return "model.pt" if _checked(selection) == "best" else "model_best.pt"


def last_model_filename(selection: str) -> str:
    """Where the weights at the end of training go (not written for ``"best"``): ``model.pt`` for
    ``"last"``, ``model_last.pt`` for ``"ema"``."""
    return "model_last.pt" if _checked(selection) == "ema" else "model.pt"


def average_model_filename(selection: str, ema_momentum: float) -> str:
    """Where the weights' moving average goes: ``model.pt`` for ``"ema"``, else ``model_ema.pt``.

    Raises:
        ValueError: ``"ema"`` selected with ``ema_momentum`` 0 (no average to select).
    """
    if _checked(selection) != "ema":
        return "model_ema.pt"
    if not float(ema_momentum):
        raise ValueError("model_selection 'ema' needs ema_momentum > 0 (the moving average it selects).")
    return "model.pt"
