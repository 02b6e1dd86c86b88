"""Which weights ``models/model.pt`` holds after training: the best validated ones or the last.

The official recipe keeps the checkpoint of the best validation score (mean of segmentation
Dice and classification AUC). On the demo's validation split (10 BUSI images, 6 fetal head, a
few thyroid videos) that score is noisy enough to pick a poor early epoch (one CPU run kept epoch
5 of 80): over ten CPU runs the last weights scored a mean test Dice of 0.561 against 0.542 for
the best-scored ones, higher in eight runs and lower in two, by 0.010 and 0.024 (docs/results.md,
session 5).
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
