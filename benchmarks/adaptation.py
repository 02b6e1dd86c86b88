"""Adaptation with few labels (issue 24): test Dice against the number of labelled images of a new dataset.

Data. Each ``--datasets`` folder of ``--adapt_dir`` (``images/``, ``masks/``, ``metadata.csv`` with a
``group`` column, as ../shared/data_adapt holds them) is split once by ``scripts/make_datalist.py``'s
code: groups kept together, ``--test_images`` of its images (about 20 of 60) in the test split, the
rest the training pool. The subsets of a seed are nested: the training images of each dataset in the
order of ``random.Random(f"{seed}/{dataset}")``, the first N kept. Every dataset adapts at once, in
one run per cell, as ``make demo`` adapts the shipped model to both.

Cells (a method at N labelled images per dataset and a seed); each stage is one subprocess:

- ``shipped``: ``--init_ckpt`` as it is, evaluated once (N = 0: what adaptation starts from);
- ``sync``, ``norms``, ``decoders``, ``finetune``: pretrain.yaml + cpu.yaml + finetune.yaml from
  ``--init_ckpt`` with ``trainable`` prompts (the paper's sync), norms, decoders or all;
- ``rehearsal``: ``finetune`` replaying the demo datasets (``rehearsal_registry_file``);
- ``scratch``: PerceptGuide from scratch (pretrain.yaml + cpu.yaml + shipped.yaml) on the N images;
- ``unet``: MONAI's U-Net from scratch (``benchmarks.unet_baseline``) on the N images;
- ``unet-transfer``: the U-Net trained on the demo datasets first (one stage, ``--unet_pretrain_minutes``),
  then fine-tuned on the N images.

``norms`` and ``decoders`` run at ``--parts_count`` only (which parts must learn); ``--seed_counts``
(and ``--seed_methods``) run with every seed. Every PerceptGuide stage takes ``--steps`` optimisation
steps; a U-Net cell gets the CPU seconds of the ``finetune`` stage of its subset (``rehearsal``
where there is none). Test Dice (per image, empty ground truth excluded) at each network's input
size, each test image letterboxed whole as the inference command sees it (``--geometry``; the
official centre crop cuts lesions at the border): evaluate.yaml for PerceptGuide, the U-Net tool's
own (the same metric code). With ``--forgetting``, each adapted checkpoint at ``--parts_count`` is
also evaluated on the demo test split (the datasets it was trained on before).

``--unet_init`` gives the transfer cells a demo-trained U-Net (``unet-pretrain/unet.pt`` of another
study) instead of training one; ``--tables A/results.json B/results.json`` reports studies run apart
(e.g. two processes of one thread each, on two cores) as one table.

Outputs in ``--work_dir``: the split and subsets, one folder per stage (``log.txt``, ``stage.json``)
and ``results.json``; the markdown table is printed and written with ``--markdown``, the plot of
Dice against N with ``--plot``. A stage whose ``stage.json`` records a success of the same command
does not run again.

Usage::

    python -m benchmarks.adaptation [--datasets mmotu busbra] [--counts 5 10 20 40] [--seeds 0 1 2] \\
        [--seed_counts 10] [--seed_methods sync finetune unet] [--methods sync finetune rehearsal scratch unet unet-transfer] [--steps 120] \\
        [--parts_count 40] [--forgetting] [--work_dir runs/adaptation] [--markdown FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import BUNDLE_ROOT, DEMO_DATA
from benchmarks.benchmark import machine
from benchmarks.label_efficiency import (
    Stage,
    bundle_run,
    config_values,
    dry_run_text,
    epochs_for,
    read_datalist,
    read_scores,
    run_stage,
    spread,
    stage_env,
    supervised_batches,
)
from bundle.data.datalist import write_datalist
from bundle.data.scan import DatalistSpec, make_datalist

ADAPT_DIR = BUNDLE_ROOT.parent / "shared" / "data_adapt"
# dataset folder -> (organ, object type)
PROMPTS: dict[str, tuple[str, str]] = {"mmotu": ("ovary", "tumor"), "busbra": ("breast", "tumor")}
# adaptation method -> trainable parts; "rehearsal" is "finetune" replaying the demo datasets
PARTS: dict[str, str] = {"sync": "prompts", "norms": "norms", "decoders": "decoders", "finetune": "all", "rehearsal": "all"}
PART_METHODS = ("norms", "decoders")
SHIPPED, SCRATCH, UNET, UNET_TRANSFER = "shipped", "scratch", "unet", "unet-transfer"
METHODS = (SHIPPED, "sync", "norms", "decoders", "finetune", "rehearsal", SCRATCH, UNET, UNET_TRANSFER)
ADAPT_CONFIGS = ("configs/pretrain.yaml", "configs/cpu.yaml", "configs/finetune.yaml")
SCRATCH_CONFIGS = ("configs/pretrain.yaml", "configs/cpu.yaml", "configs/shipped.yaml")
EVAL_CONFIGS = ("configs/evaluate.yaml",)


@dataclass
class Cell:
    """A method at N labelled images per dataset and a seed, and the files its Dice is read from."""

    method: str
    count: int
    seed: int
    labelled: dict[str, int]
    train: str = ""
    results: dict[str, Path] = field(default_factory=dict)  # "test" / "forgetting" -> metrics.csv or U-Net JSON
    note: str = ""


def nested_subset(entries: Sequence[Mapping], count: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    """The first ``count`` training images of each dataset in the order of ``random.Random(f"{seed}/{dataset}")``."""
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        by_dataset[entry["dataset"]].append(dict(entry))
    kept, labelled = [], {}
    for dataset, members in sorted(by_dataset.items()):
        order = sorted(members, key=lambda e: e["image"])
        random.Random(f"{seed}/{dataset}").shuffle(order)
        kept += order[:count]
        labelled[dataset] = min(count, len(order))
    return kept, labelled


def dice_of(path: Path) -> dict[str, float]:
    """dataset -> test Dice of evaluate.yaml's metrics.csv or the U-Net tool's JSON (:func:`read_scores`)."""
    return {dataset: row["dice"] for dataset, row in read_scores(path).items()}


class Planner:
    """The stages and cells of the study (reads the data, writes the split)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work_dir).resolve()
        self.init_ckpt = Path(args.init_ckpt).resolve()
        self.adapt_configs = [*ADAPT_CONFIGS, *args.train_config]
        self.scratch_configs = [*SCRATCH_CONFIGS, *args.train_config]
        self.eval_configs = [*EVAL_CONFIGS, *args.eval_config]
        self.batch_size = int(config_values(self.adapt_configs)["batch_size"])
        self.stages: dict[str, Stage] = {}
        self.cells: list[Cell] = []
        self.datalists: dict[Path, dict[str, list[dict]]] = {}

    def split(self) -> tuple[Path, list[dict], list[dict]]:
        """Write each dataset's fixed split (test ``--test_images``) and the registry; (registry, train, test)."""
        data = self.work / "data"
        data.mkdir(parents=True, exist_ok=True)
        registry = data / "datasets.yaml"
        registry.unlink(missing_ok=True)
        train, test = [], []
        for name in self.args.datasets:
            folder = Path(self.args.adapt_dir) / name
            total = len(list((folder / "images").iterdir()))
            share = self.args.test_images / total
            organ, object_type = PROMPTS[name]
            spec = DatalistSpec(name, ("segmentation",), organ, object_type)
            out = data / f"{name}.json"
            make_datalist(folder, out, spec, registry, (1 - share, 0.0, share), 0, groups_csv=folder / "metadata.csv")
            splits = read_datalist(out)
            train += splits["training"]
            test += splits["test"]
        return registry, train, test

    def build(self) -> None:
        args = self.args
        self.registry, train, test = self.split()
        self.test = test
        self.unet_start = Path(args.unet_init).resolve() if args.unet_init else self.work / "unet-pretrain" / "unet.pt"
        if UNET_TRANSFER in args.methods and not args.unet_init:
            self.unet_pretrain()
        if SHIPPED in args.methods:
            self.shipped_cell()
        for count in args.counts:
            for seed in args.seeds if count in (args.seed_counts or args.counts) else args.seeds[:1]:
                training, labelled = nested_subset(train, count, seed)
                datalist = self.work / "subsets" / f"seed{seed}" / f"n{count}.json"
                self.datalists[datalist] = {"training": training, "validation": test, "test": test}
                for method in [m for m in METHODS if m in args.methods and m != SHIPPED]:
                    if method in PART_METHODS and count != args.parts_count:
                        continue
                    if seed != args.seeds[0] and args.seed_methods and method not in args.seed_methods:
                        continue
                    self.cells.append(self.cell(method, count, seed, labelled, datalist))

    def shipped_cell(self) -> None:
        """The starting checkpoint on the test split (and the demo one with ``--forgetting``), untrained here."""
        datalist = self.work / "subsets" / "shipped.json"
        self.datalists[datalist] = {"training": [], "validation": self.test, "test": self.test}
        cell = Cell(SHIPPED, 0, 0, {})
        folder = self.work / "cells" / SHIPPED
        for name, data in (("test", {"registry_file": self.registry, "datalist": datalist}), ("forgetting", {"dataset_dir": DEMO_DATA})):
            if name == "forgetting" and not self.args.forgetting:
                continue
            key = f"{SHIPPED}/{name}"
            overrides = {**data, "split": "test", "geometry": self.args.geometry, "ckpt_path": self.init_ckpt, "eval_dir": folder / name}
            self.stages[key] = Stage(key, f"evaluate {self.init_ckpt.name} ({name})", bundle_run(self.eval_configs, overrides), folder / name)
            cell.results[name] = folder / name / "metrics.csv"
        self.cells.append(cell)

    def unet_pretrain(self) -> None:
        folder = self.work / "unet-pretrain"
        command = [
            sys.executable, "-m", "benchmarks.unet_baseline", "--dataset_dir", str(DEMO_DATA), "--clock", "process",
            "--minutes", f"{self.args.unet_pretrain_minutes:g}", "--threads", str(self.args.threads),
            "--save", str(folder / "unet.pt"), "--json", str(folder / "unet.json"),
        ]  # fmt: skip
        title = f"U-Net on the demo datasets, {self.args.unet_pretrain_minutes:g} CPU minutes (transfer start)"
        self.stages["unet-pretrain"] = Stage("unet-pretrain", title, command, folder)

    def cell(self, method: str, count: int, seed: int, labelled: dict[str, int], datalist: Path) -> Cell:
        cell = Cell(method, count, seed, labelled)
        folder = self.work / "cells" / method / f"n{count}" / f"seed{seed}"
        where = f"{method} at N={count}, seed {seed}"
        cell.train = f"{method}/n{count}/seed{seed}"
        if method in (UNET, UNET_TRANSFER):
            self.unet_stage(cell, folder, datalist, where)
            return cell
        overrides: dict[str, object] = {
            "registry_file": self.registry, "datalist": datalist, "seed": seed, "val_interval": 10**6,
            "ckpt_dir": folder / "models", "output_dir": folder / "runs",
        }  # fmt: skip
        if method == SCRATCH:
            configs = self.scratch_configs
        else:
            configs = self.adapt_configs
            overrides.update(init_ckpt=self.init_ckpt, trainable=PARTS[method], learning_rate=self.args.learning_rate)
            if method == "sync":
                overrides["learning_rate"] = self.args.sync_learning_rate
        samples = datalist_training(self.datalists[datalist])
        if method == "rehearsal":
            overrides["rehearsal_registry_file"] = DEMO_DATA / "datasets.yaml"
            samples = samples + demo_training()
        epochs = epochs_for(self.args.steps, supervised_batches(samples, self.batch_size), where)
        overrides["epochs"] = epochs
        title = f"train {where}: {epochs} epochs"
        self.stages[cell.train] = Stage(cell.train, title, bundle_run(configs, overrides), folder / "train")
        self.evaluation(cell, folder, "test", {"registry_file": self.registry, "datalist": datalist})
        if self.args.forgetting and count == self.args.parts_count and method != SCRATCH:
            self.evaluation(cell, folder, "forgetting", {"dataset_dir": DEMO_DATA})
        return cell

    def evaluation(self, cell: Cell, folder: Path, name: str, data: Mapping[str, object]) -> None:
        key = f"{cell.train}/{name}"
        overrides = {**data, "split": "test", "geometry": self.args.geometry, "ckpt_path": folder / "models" / "model.pt", "eval_dir": folder / name}
        self.stages[key] = Stage(key, f"evaluate {cell.train} ({name})", bundle_run(self.eval_configs, overrides), folder / name, (cell.train,))
        cell.results[name] = folder / name / "metrics.csv"

    def unet_stage(self, cell: Cell, folder: Path, datalist: Path, where: str) -> None:
        budgets = [f"{method}/n{cell.count}/seed{cell.seed}" for method in ("finetune", "rehearsal")]
        budget = next((key for key in budgets if key in self.stages), None)
        if budget is None:
            raise ValueError(f"{where}: its CPU budget is the finetune (or rehearsal) cell's; add one of those methods")
        result = folder / "unet.json"
        command = [
            sys.executable, "-m", "benchmarks.unet_baseline", "--registry_file", str(self.registry),
            "--datalist", str(datalist), "--seed", str(cell.seed), "--clock", "process",
            "--threads", str(self.args.threads), "--geometry", self.args.geometry, "--json", str(result),
        ]  # fmt: skip
        needs: tuple[str, ...] = (budget,)
        if cell.method == UNET_TRANSFER:
            command += ["--init", str(self.unet_start), "--lr", f"{self.args.unet_transfer_lr:g}"]
            needs += () if self.args.unet_init else ("unet-pretrain",)
        title = f"{where}: the CPU minutes of '{budget}'"
        self.stages[cell.train] = Stage(cell.train, title, command, folder, needs, minutes_from=budget)
        cell.results["test"] = result


def datalist_training(splits: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    return [{"dataset": e["dataset"], "task": e["task"]} for e in splits["training"]]


def demo_training() -> list[dict]:
    """The demo training samples a rehearsal cell replays (their count sets its epoch length)."""
    from bundle.data import load_registry, load_samples

    return [{"dataset": s["dataset"], "task": s["task"]} for s in load_samples(load_registry(DEMO_DATA / "datasets.yaml"), "train")]


def cell_row(cell: Cell, records: Mapping[str, dict]) -> dict:
    train = records.get(cell.train, {})
    return {
        "method": cell.method, "count": cell.count, "seed": cell.seed, "labelled": cell.labelled,
        "train_cpu_s": train.get("cpu_s"), "train_wall_s": train.get("wall_s"),
        "dice": dice_of(cell.results["test"]) if "test" in cell.results else {},
        "forgetting": dice_of(cell.results["forgetting"]) if "forgetting" in cell.results else {},
    }  # fmt: skip


def table(rows: Sequence[Mapping], key: str = "dice") -> str:
    """Markdown: a row per (N, method), test Dice per dataset (mean ± sd over seeds) and their mean."""
    rows = [r for r in rows if r[key]]
    datasets = sorted({d for r in rows for d in r[key]})
    groups: dict[tuple[int, str], list[Mapping]] = defaultdict(list)
    for row in rows:
        groups[(row["count"], row["method"])].append(row)
    lines = ["| N | method | seeds | " + " | ".join(datasets) + " | mean | train CPU min |", "|---" * (len(datasets) + 5) + "|"]
    for (count, method), members in sorted(groups.items(), key=lambda item: (item[0][0], METHODS.index(item[0][1]))):
        scored = [r for r in members if all(d in r[key] for d in datasets)]
        cells = [spread([r[key][d] for r in scored]) for d in datasets]
        mean = spread([statistics.fmean(r[key][d] for d in datasets) for r in scored])
        minutes = [r["train_cpu_s"] / 60 for r in members if r["train_cpu_s"]]
        cpu = f"{statistics.fmean(minutes):.1f}" if minutes else "–"
        lines.append(f"| {count} | {method} | {len(scored)} | " + " | ".join(cells) + f" | {mean} | {cpu} |")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping], path: Path) -> None:
    """Test Dice against N, one panel per dataset, one line per method (mean and sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for r in rows for d in r["dice"]})
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), sharey=True, squeeze=False)
    for row in rows:
        if row["method"] == SHIPPED:
            for axis, dataset in zip(axes[0], datasets):
                axis.axhline(row["dice"][dataset], linestyle="--", color="gray", label="shipped, not adapted")
    for method in [m for m in METHODS if m not in (*PART_METHODS, SHIPPED)]:
        for axis, dataset in zip(axes[0], datasets):
            points: dict[int, list[float]] = defaultdict(list)
            for row in rows:
                if row["method"] == method and dataset in row["dice"]:
                    points[row["count"]].append(row["dice"][dataset])
            if points:
                counts = sorted(points)
                means = [statistics.fmean(points[n]) for n in counts]
                errors = [statistics.stdev(points[n]) if len(points[n]) > 1 else 0.0 for n in counts]
                axis.errorbar(counts, means, yerr=errors, marker="o", capsize=3, label=method)
    for axis, dataset in zip(axes[0], datasets):
        axis.set_xscale("log")
        counts = sorted({r["count"] for r in rows if r["method"] != SHIPPED})
        axis.set_xticks(counts, [str(n) for n in counts])
        axis.minorticks_off()
        axis.set_title(dataset)
        axis.set_xlabel("labelled training images")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test Dice per image")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass
class DryPlan:
    """What ``label_efficiency.dry_run_text`` prints: the stages, the cells and the budget line."""

    stages: dict[str, Stage]
    steps: int
    cells: list[Cell]

    @property
    def settings(self) -> dict:
        return {"steps": self.steps, "ssl_steps": "-"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapt_dir", default=str(ADAPT_DIR))
    parser.add_argument("--datasets", nargs="+", default=list(PROMPTS), choices=sorted(PROMPTS))
    parser.add_argument("--test_images", type=int, default=20, help="test images per dataset (groups kept whole)")
    parser.add_argument("--counts", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed_counts", type=int, nargs="+", help="counts run with every seed (default: all)")
    parser.add_argument("--seed_methods", nargs="+", choices=METHODS, help="methods run with every seed (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--parts_count", type=int, default=40, help="N of the norms / decoders cells and forgetting")
    parser.add_argument("--init_ckpt", default=str(BUNDLE_ROOT / "models" / "pretrained.pt"))
    parser.add_argument("--steps", type=int, default=120, help="optimisation steps per PerceptGuide stage")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="of the fine-tuning cells")
    parser.add_argument("--sync_learning_rate", type=float, default=1e-3, help="of the sync cells")
    parser.add_argument("--unet_pretrain_minutes", type=float, default=8.0)
    parser.add_argument("--unet_transfer_lr", type=float, default=3e-4)
    parser.add_argument("--unet_init", help="the demo-trained U-Net of the transfer cells (default: trained first)")
    parser.add_argument("--tables", nargs="+", help="only print (and --markdown, --plot) the tables of these results.json files")
    parser.add_argument(
        "--geometry", choices=["crop", "letterbox"], default="letterbox",
        help="of the test images: letterbox (the whole image, as inference sees it) or the official centre crop",
    )  # fmt: skip
    parser.add_argument("--forgetting", action="store_true", help="also evaluate the adapted models on the demo test split")
    parser.add_argument("--train_config", nargs="+", default=[], help="config files layered on every training stage")
    parser.add_argument("--eval_config", nargs="+", default=[], help="config files layered on evaluate.yaml")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work_dir", default=str(BUNDLE_ROOT / "runs" / "adaptation"))
    parser.add_argument("--markdown", help="also write the tables here")
    parser.add_argument("--plot", help="write a PNG of Dice against N here (needs matplotlib)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser.parse_args(argv)


def report(rows: Sequence[Mapping], args: argparse.Namespace) -> None:
    """Print the tables of ``rows``; write them with ``--markdown`` and the plot with ``--plot``."""
    counts = sorted({row["count"] for row in rows if row["forgetting"] and row["method"] != SHIPPED})
    text = table(rows)
    if counts:
        text += f"\n\nForgetting: demo test split after adapting at N = {counts}\n\n" + table(rows, "forgetting")
    print(f"\n{text}\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.plot:
        plot(rows, Path(args.plot))


def joined_cells(paths: Sequence[str | Path]) -> list[dict]:
    """The cells of several studies' ``results.json``: a cell found in several (the shipped one) counts
    once, the first scored one; a cell stopped before its evaluation (no Dice) gives way to a scored one."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["cells"]:
            key = (row["method"], row["count"], row["seed"])
            if key not in rows or (row["dice"] and not rows[key]["dice"]):
                rows[key] = row
    return list(rows.values())


def main(argv: Sequence[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.tables:  # studies run apart (e.g. two processes of one thread each) reported as one
        report(joined_cells(args.tables), args)
        return None
    planner = Planner(args)
    planner.build()
    if args.dry_run:
        print(dry_run_text(DryPlan(planner.stages, args.steps, planner.cells)))
        return None
    for path, splits in planner.datalists.items():
        write_datalist(path, splits)
    env = stage_env(args.threads)
    records: dict[str, dict] = {}
    for stage in planner.stages.values():
        records[stage.key] = run_stage(stage, records, env)
    rows = [cell_row(cell, records) for cell in planner.cells]
    settings = {**{k: v for k, v in vars(args).items() if k != "dry_run"}, "machine": machine()}
    results = {"settings": settings, "cells": rows, "stages": records}
    output = Path(args.work_dir) / "results.json"
    output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report(rows, args)
    print(f"results: {output}")
    return results


if __name__ == "__main__":
    main()
