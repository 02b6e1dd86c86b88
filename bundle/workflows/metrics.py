"""Per-dataset segmentation and classification metrics for mixed-task batches (ignite Metric)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.handlers import from_engine
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_roc_auc
from monai.networks.utils import one_hot
from monai.utils import CommonKeys as Keys

from bundle.prompts import SEGMENTATION, TASKS

__all__ = ["MultiTaskMetrics", "SampleRecord", "summarise", "segmentation_scores"]


@dataclass
class SampleRecord:
    """Per-sample result: Dice/HD95 for segmentation (NaN when the ground truth is empty), or
    class probabilities and label for classification."""

    dataset: str
    task: str
    dice: float = math.nan
    hd95: float = math.nan
    probabilities: list[float] = field(default_factory=list)
    label: int = -1


def segmentation_scores(pred: torch.Tensor, label: torch.Tensor, classes: int) -> tuple[list[float], list[float]]:
    """Per image: mean foreground Dice (MONAI ``compute_dice``) and HD95 in pixels.

    Classes absent from an image's ground truth are left out of its means (NaN when none is
    present); HD95 also leaves out classes the prediction misses (no distance to measure).

    Args:
        pred, label: (N, H, W) class indices.
        classes: K, the number of segmentation channels (class 0 the background).

    Returns:
        N Dice values and N HD95 values.
    """
    guess, truth = (one_hot(x[:, None], classes, dim=1) for x in (pred, label))
    dice = compute_dice(guess, truth, include_background=False, ignore_empty=True)  # (N, K-1), NaN: empty truth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI warns on every empty mask
        hd95 = compute_hausdorff_distance(guess, truth, include_background=False, percentile=95)
    present = guess[:, 1:].flatten(2).any(-1) & truth[:, 1:].flatten(2).any(-1)
    hd95 = torch.where(present, hd95, torch.nan)
    return torch.nanmean(dice, 1).tolist(), torch.nanmean(hd95, 1).tolist()


def summarise(records: list[SampleRecord]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-dataset table and the means.

    Returns:
        ``{dataset: {"seg_n", "dice", "hd95", "cls_n", "accuracy", "auc"}}`` (only the task's
        keys) and ``{"seg_dice", "cls_accuracy", "cls_auc", "score"}``, score being the mean of
        mean Dice and mean AUC (the official model-selection criterion), over what is available.
    """
    groups: dict[tuple[str, str], list[SampleRecord]] = defaultdict(list)
    for record in records:
        groups[(record.dataset, record.task)].append(record)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for (dataset, task), items in sorted(groups.items()):
        if task == SEGMENTATION:
            dice = [r.dice for r in items if not math.isnan(r.dice)]
            hd95 = [r.hd95 for r in items if not math.isnan(r.hd95)]
            table[dataset].update(
                seg_n=len(dice), dice=float(np.mean(dice)) if dice else math.nan,
                hd95=float(np.mean(hd95)) if hd95 else math.nan,
            )  # fmt: skip
        else:
            probs = torch.tensor([r.probabilities for r in items])
            labels = torch.tensor([r.label for r in items])
            accuracy = float((probs.argmax(1) == labels).float().mean())
            table[dataset].update(cls_n=len(items), accuracy=accuracy, auc=_auc(probs, labels))
    means = {
        "seg_dice": _nanmean([row["dice"] for row in table.values() if "dice" in row]),
        "cls_accuracy": _nanmean([row["accuracy"] for row in table.values() if "accuracy" in row]),
        "cls_auc": _nanmean([row["auc"] for row in table.values() if "auc" in row]),
    }
    means["score"] = _nanmean([means["seg_dice"], means["cls_auc"]])
    return dict(table), means


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC (macro one-vs-rest for several classes); NaN when only one class is present."""
    if labels.unique().numel() < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(compute_roc_auc(probs[:, 1], labels))
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1])
    return float(compute_roc_auc(probs, onehot, average="macro"))


class MultiTaskMetrics(Metric):
    """Collects per-sample records from mixed batches and reports them per dataset.

    On completion it puts the score (mean of mean seg Dice and mean cls AUC) under its own name
    in ``engine.state.metrics`` — a float, usable as MONAI's key metric — plus one entry per
    dataset and figure, e.g. ``"BUSI/dice"``, for the stats and TensorBoard handlers.

    Args:
        output_transform: maps ``engine.state.output`` to ``(pred, targets)``.
    """

    def __init__(self, output_transform: Callable = from_engine([Keys.PRED, Keys.LABEL], first=True)) -> None:
        self.records: list[SampleRecord] = []
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self.records = []

    def update(self, output: tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]) -> None:
        """output: ((seg logits (B, K, H, W), cls logits (B, M)), targets dict)."""
        (seg_logits, cls_logits), target = output
        tasks = [TASKS[task_id] for task_id in target["task_id"].view(-1).tolist()]
        segmentation = [i for i, task in enumerate(tasks) if task == SEGMENTATION]
        dice, hd95 = ([], [])
        if segmentation:
            rows = torch.tensor(segmentation)
            seg_pred = seg_logits[rows].argmax(1).cpu()
            dice, hd95 = segmentation_scores(seg_pred, target["label"][rows, 0].cpu(), seg_logits.shape[1])
        scores = dict(zip(segmentation, zip(dice, hd95)))
        probabilities = torch.softmax(cls_logits.float(), 1).cpu()
        for i, (dataset, task) in enumerate(zip(target["dataset"], tasks)):
            if task == SEGMENTATION:
                self.records.append(SampleRecord(dataset, task, dice=scores[i][0], hd95=scores[i][1]))
            else:
                label = int(target["cls_label"].view(-1)[i])
                self.records.append(SampleRecord(dataset, task, probabilities=probabilities[i].tolist(), label=label))

    def compute(self) -> dict[str, float]:
        """Flat ``{"<dataset>/<figure>": value, "mean/<figure>": value}``."""
        table, means = summarise(self.records)
        flat = {f"{dataset}/{key}": float(value) for dataset, row in table.items() for key, value in row.items()}
        flat.update({f"mean/{key}": value for key, value in means.items()})
        return flat

    def completed(self, engine: Engine, name: str) -> None:
        flat = self.compute()
        engine.state.metrics.update(flat)
        engine.state.metrics[name] = flat["mean/score"]
