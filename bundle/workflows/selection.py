"""Which weights ``models/model.pt`` holds after training: the best validated ones or the last.

The official recipe keeps the checkpoint of the best validation score (mean of segmentation
Dice and classification AUC). On a validation split as small as the demo's that score is noisy
enough to pick a poor early epoch, so the CPU setting keeps the last weights (docs/results.md).
"""

from __future__ import annotations

__all__ = ["MODEL_SELECTIONS", "best_model_filename"]

MODEL_SELECTIONS = ("best", "last")


def best_model_filename(selection: str) -> str:
    """Where the best-validated weights go: ``model.pt`` for ``"best"``, ``model_best.pt`` for ``"last"``
    (``model.pt`` then holds the weights at the end of training)."""
    if selection not in MODEL_SELECTIONS:
        raise ValueError(f"model_selection must be one of {list(MODEL_SELECTIONS)}, got '{selection}'.")
    return "model.pt" if selection == "best" else "model_best.pt"
