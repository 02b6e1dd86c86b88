"""Evaluation report handler: metrics.csv / metrics.md in the paper's table shape, best and worst overlays."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from bundle.prompts import SEGMENTATION, TASK_IDS
from bundle.workflows.metrics import MultiTaskMetrics, summarise
from bundle.workflows.overlay import save_png, side_by_side

__all__ = ["EvaluationReport"]

logger = logging.getLogger(__name__)
COLUMNS = ("dataset", "seg_n", "dice", "hd95", "cls_n", "accuracy", "auc")


def _cell(value: float | int | None, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) or float(value).is_integer() and not percent:
        return str(int(value))
    return f"{100 * value:.2f}" if percent else f"{value:.2f}"


class EvaluationReport:
    """Writes the evaluator's per-dataset table and overlays when it completes.

    Files in ``output_dir``: ``metrics.csv`` (one row per dataset plus ``mean``), ``metrics.md``
    (Dice, accuracy and AUC in percent, HD95 in pixels of the network input), and
    ``overlays/<dataset>_{best,worst}<k>.png`` (ground truth | prediction) for the ``num_cases``
    best and worst segmentation images of each dataset.

    Args:
        metric: the evaluator's :class:`MultiTaskMetrics` (its records make the table).
        output_dir: folder for the report.
        num_cases: best / worst overlays per dataset.
    """

    def __init__(self, metric: MultiTaskMetrics, output_dir: str | Path, num_cases: int = 2) -> None:
        self.metric = metric
        self.output_dir = Path(output_dir)
        self.num_cases = num_cases
        self.thumbnails: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.thumbnails.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep_segmentation_cases)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _keep_segmentation_cases(self, engine: Engine) -> None:
        """Keep image, label and prediction of every segmentation sample, in iteration order."""
        (seg_logits, _), target = engine.state.output[Keys.PRED], engine.state.output[Keys.LABEL]
        images = engine.state.output[Keys.IMAGE]
        predictions = seg_logits.argmax(1)
        for i, task in enumerate(target["task_id"].tolist()):
            if task == TASK_IDS[SEGMENTATION]:
                self.thumbnails.append(
                    (images[i].float().cpu().numpy(), target["label"][i, 0].cpu().numpy(), predictions[i].cpu().numpy())
                )

    def write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        table, means = summarise(self.metric.records)
        self._write_csv(table, means)
        self._write_markdown(table, means)
        self._write_overlays()
        logger.info("evaluation report written to %s", self.output_dir)

    def _write_csv(self, table: dict, means: dict) -> None:
        with open(self.output_dir / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            for dataset, row in table.items():
                writer.writerow({"dataset": dataset, **row})
            writer.writerow({"dataset": "mean", "dice": means["seg_dice"], "accuracy": means["cls_accuracy"], "auc": means["cls_auc"]})

    def _write_markdown(self, table: dict, means: dict) -> None:
        lines = [
            "| dataset | seg images | Dice (%) | HD95 (px) | cls images | accuracy (%) | AUC (%) |",
            "|---|---|---|---|---|---|---|",
        ]
        for dataset, row in table.items():
            lines.append(
                f"| {dataset} | {_cell(row.get('seg_n'))} | {_cell(row.get('dice'), True)} | {_cell(row.get('hd95'))} "
                f"| {_cell(row.get('cls_n'))} | {_cell(row.get('accuracy'), True)} | {_cell(row.get('auc'), True)} |"
            )
        lines.append(
            f"| **mean** | | **{_cell(means['seg_dice'], True)}** | | | **{_cell(means['cls_accuracy'], True)}** "
            f"| **{_cell(means['cls_auc'], True)}** |"
        )
        (self.output_dir / "metrics.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_overlays(self) -> None:
        segmentation = [r for r in self.metric.records if r.task == SEGMENTATION]
        if len(segmentation) != len(self.thumbnails):
            raise RuntimeError(f"{len(segmentation)} segmentation records but {len(self.thumbnails)} kept images")
        by_dataset: dict[str, list[int]] = {}
        for index, record in enumerate(segmentation):
            if not math.isnan(record.dice):
                by_dataset.setdefault(record.dataset, []).append(index)
        for dataset, indices in by_dataset.items():
            ranked = sorted(indices, key=lambda i: segmentation[i].dice)
            picks = {"worst": ranked[: self.num_cases], "best": ranked[::-1][: self.num_cases]}
            for kind, chosen in picks.items():
                for rank, index in enumerate(chosen, start=1):
                    image, label, pred = self.thumbnails[index]
                    name = f"{dataset}_{kind}{rank}_dice{segmentation[index].dice:.3f}.png"
                    save_png(side_by_side(image, label, pred), self.output_dir / "overlays" / name)
