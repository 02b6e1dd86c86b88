"""Label efficiency (issue 23): test Dice per dataset of four methods at a few shares of the training labels.

Subsets. For each seed, the training cases of every dataset (a case is one image with all its
datalist entries: BUSI's segmentation and classification entries of an image are one case) are
put in a seeded order, and the subset at fraction f keeps the first max(1, round(f·n)) of them:
the subsets of one seed are nested (10 % ⊂ 25 % ⊂ 100 %) and every dataset keeps an image. A
subset is a datalist JSON whose training list is the subset and whose validation and test lists
are the source's. The training images left out are linked into one folder per dataset under the
work directory; with that dataset's organ and object type they are the unlabelled pool of the
consistency cell, together with the ``--unlabelled DIR ORGAN OBJECT_TYPE`` folders.

Cells. A cell is a method at a labelled fraction and a seed (the seed of the subset and of the
training); each of its stages is one subprocess, printed before it runs:

- ``scratch``: ``python -m monai.bundle run`` of pretrain.yaml + cpu.yaml on the subset.
- ``ssl``: the same with ``--init_ckpt`` a self-supervised encoder: ``--ssl_ckpt``, or one trained
  first with ssl_pretrain.yaml + cpu.yaml on every training image of the source (labelled or not:
  the stage reads no label) and the ``--unlabelled`` folders, one encoder per seed for every
  fraction.
- ``ssl+consistency``: as ``ssl``, plus ``unlabelled_dirs`` (the pool) and ``consistency_weight``.
- ``unet``: ``python -m benchmarks.unet_baseline --datalist`` on the subset.
- with ``--ablations``: ``ssl`` at one fraction and seed, from encoders trained with one SSL term
  switched off each (``recon_weight 0``, ``distill_weight 0``, ``global_weight 0``,
  ``adaptive_masking false``); these encoders are trained even when ``--ssl_ckpt`` is given.

The PerceptGuide cells are evaluated on the test split by configs/evaluate.yaml ``--ckpt_path``
(its ``metrics.csv``); the U-Net by its own tool, with the same metric code (Dice per image, empty
ground truth excluded, per dataset).

Budget. Every training stage of a kind takes the same number of optimisation steps in every cell:
``--steps`` for the supervised stages (default: what the configs' ``epochs`` give on the whole
training list) and ``--ssl_steps`` for the SSL stage (default ``--steps``). The tool turns the steps
into ``--epochs`` from the cell's batches per epoch (rounded to whole epochs, at least one) and
scales what the configs count in epochs (``val_interval``, ``consistency_rampup_epochs``) alike, so
a 10 % cell runs about ten times the epochs of the 100 % one at the same compute. A consistency
batch holds labelled and unlabelled images (``unlabelled_share``), so that cell draws fewer
labelled images in its steps. The U-Net, whose tool budgets time, gets the CPU seconds (all
threads) that the ``scratch`` training stage of the same subset and seed took, its start-up and
validations included; or ``--unet_minutes`` of CPU time for every U-Net cell.

Outputs in ``--work_dir``: the subsets, one folder per stage (``log.txt``, its outputs,
``stage.json``), and ``results.json``: every cell (labelled images per dataset, unlabelled images,
epochs, steps, CPU and wall seconds, Dice per dataset) and every stage (command, exit status,
seconds). The markdown table (mean ± standard deviation over seeds, per dataset) is printed and
written with ``--markdown``; ``--plot`` draws Dice against the labelled fraction (matplotlib: the
bench extra). A stage whose ``stage.json`` records a success of the same command does not run
again, so a study that stopped continues where it was. ``--dry-run`` prints the commands and
writes nothing. ``--merge A.json B.json`` runs nothing and reports the cells of several results files
as one table (and plot): a study run in parts, a part per invocation.

Usage::

    python -m benchmarks.label_efficiency [--fractions 0.1 0.25 1.0] [--seeds 0 1 2] \\
        [--seed_fractions 0.1 1.0] [--methods scratch ssl ssl+consistency unet] [--ablations] \\
        [--unlabelled DIR ORGAN OBJECT_TYPE ...] [--ssl_ckpt FILE] [--steps N] [--ssl_steps N] \\
        [--work_dir runs/label_efficiency] [--markdown FILE] [--plot FILE] [--dry-run]
    python -m benchmarks.label_efficiency --merge A.json B.json [--markdown FILE] [--plot FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from benchmarks import BUNDLE_ROOT, DEMO_DATA
from benchmarks.benchmark import machine
from bundle.data import load_registry, training_sampler
from bundle.data.datalist import write_datalist
from bundle.data.files import folder_samples
from bundle.data.registry import DatasetRegistry
from bundle.prompts import SEGMENTATION

SCRATCH, SSL, CONSISTENCY, UNET = "scratch", "ssl", "ssl+consistency", "unet"
METHODS = (SCRATCH, SSL, CONSISTENCY, UNET)
# the ssl cell from an encoder trained with one self-supervised term switched off
ABLATIONS: dict[str, dict[str, str]] = {
    "ssl-no-recon": {"recon_weight": "0"},
    "ssl-no-distill": {"distill_weight": "0"},
    "ssl-no-global": {"global_weight": "0"},
    "ssl-random-masks": {"adaptive_masking": "false"},
}
TRAIN_CONFIGS = ("configs/pretrain.yaml", "configs/cpu.yaml")
SSL_CONFIGS = ("configs/ssl_pretrain.yaml", "configs/cpu.yaml")
EVAL_CONFIGS = ("configs/evaluate.yaml",)
FILE_KEYS = ("image", "label", "mask")
SPLITS = ("training", "validation", "test")


@dataclass(frozen=True)
class PoolFolder:
    """A folder of unlabelled images with their prompts: an ``unlabelled_dirs`` entry of pretrain.yaml."""

    dir: Path
    organ: str
    object_type: str

    def entry(self) -> dict[str, str]:
        return {"dir": str(self.dir), "organ": self.organ, "object_type": self.object_type}


@dataclass(frozen=True)
class Subset:
    """The labelled share of a training list at one fraction and seed.

    Args:
        fraction: the share of each dataset's cases kept.
        seed: the seed of the case order.
        training: the datalist entries of the kept cases, in the source's order.
        labelled: dataset -> cases kept.
        left_out: dataset -> the images of the cases left out (the unlabelled pool).
    """

    fraction: float
    seed: int
    training: list[dict]
    labelled: dict[str, int]
    left_out: dict[str, list[Path]]


@dataclass
class Stage:
    """One subprocess of the study, run from the bundle root; its log and ``stage.json`` go to ``folder``.

    ``minutes_from`` names the stage whose CPU minutes become this one's ``--minutes`` (the U-Net).
    """

    key: str
    title: str
    command: list[str]
    folder: Path
    needs: tuple[str, ...] = ()
    minutes_from: str | None = None


@dataclass
class Cell:
    """A method at a labelled fraction and seed: the stages that train and evaluate it, and what they read."""

    method: str
    fraction: float
    seed: int
    labelled: dict[str, int]
    train: str = ""
    evaluation: str = ""
    result: Path | None = None
    epochs: int | None = None
    steps: int | None = None
    ssl_stage: str | None = None
    ssl_images: int = 0
    consistency_images: int = 0
    note: str = ""


@dataclass
class Plan:
    """The study: stages in run order, cells, and the files to write before the first stage."""

    stages: dict[str, Stage] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    datalists: dict[Path, dict[str, list[dict]]] = field(default_factory=dict)
    links: dict[Path, list[Path]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def read_datalist(path: Path) -> dict[str, list[dict]]:
    """The training, validation and test lists of a datalist JSON, file paths made absolute (from its folder)."""
    content = json.loads(Path(path).read_text())
    base = Path(path).resolve().parent
    missing = [key for key in SPLITS if key not in content]
    if missing:
        raise ValueError(f"datalist {path} has no {missing} list")
    return {
        key: [{k: str(base / v) if k in FILE_KEYS else v for k, v in entry.items()} for entry in content[key]]
        for key in SPLITS
    }


def training_cases(entries: Sequence[Mapping]) -> dict[str, dict[str, Path]]:
    """dataset -> {case: image}, sorted: a case is an image file name within a dataset, whatever its
    entries' tasks; its image is the one of its segmentation entry when it has one."""
    cases: dict[str, dict[str, Path]] = defaultdict(dict)
    for entry in entries:
        name = Path(entry["image"]).name
        if name not in cases[entry["dataset"]] or entry["task"] == SEGMENTATION:
            cases[entry["dataset"]][name] = Path(entry["image"])
    return {dataset: dict(sorted(images.items())) for dataset, images in sorted(cases.items())}


def kept_cases(fraction: float, total: int) -> int:
    """round(fraction · total), at least one and at most ``total``."""
    return min(total, max(1, math.floor(fraction * total + 0.5)))


def make_subset(entries: Sequence[Mapping], fraction: float, seed: int) -> Subset:
    """The cases of each dataset in the order of ``random.Random(f"{seed}/{dataset}")``, the first
    :func:`kept_cases` kept: one seed gives nested subsets, and each dataset keeps at least one case.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"a labelled fraction is in (0, 1], got {fraction}")
    kept: set[tuple[str, str]] = set()
    labelled, left_out = {}, {}
    for dataset, images in training_cases(entries).items():
        order = list(images)
        random.Random(f"{seed}/{dataset}").shuffle(order)
        count = kept_cases(fraction, len(order))
        kept.update((dataset, name) for name in order[:count])
        labelled[dataset] = count
        left_out[dataset] = [images[name] for name in sorted(order[count:])]
    training = [dict(e) for e in entries if (e["dataset"], Path(e["image"]).name) in kept]
    return Subset(fraction, seed, training, labelled, left_out)


def dataset_prompts(registry: DatasetRegistry) -> dict[str, tuple[str, str]]:
    """dataset name -> (organ, object type), from its segmentation declaration when it has one."""
    prompts: dict[str, tuple[str, str]] = {}
    for spec in registry.datasets:
        if spec.name not in prompts or spec.task == SEGMENTATION:
            prompts[spec.name] = (spec.organ, spec.object_type)
    return prompts


def supervised_batches(entries: Sequence[Mapping], batch_size: int, unlabelled: int = 0, share: float = 0.5) -> int:
    """Batches per epoch of pretrain.yaml's loader on ``entries`` (and ``unlabelled`` pool images at
    ``share`` of each batch): the length of ``bundle.data.training_sampler`` over the batch size (drop_last)."""
    samples = [{"dataset": e["dataset"], "task": e["task"]} for e in entries] + [{"labelled": 0}] * unlabelled
    return len(training_sampler(samples, batch_size=batch_size, unlabelled_share=share)) // batch_size


def epochs_for(steps: int, batches: int, where: str) -> int:
    """The whole epochs nearest ``steps`` at ``batches`` per epoch, at least one.

    Raises:
        ValueError: ``batches`` is 0 (fewer training samples than one batch), naming ``where``.
    """
    if batches < 1:
        raise ValueError(f"{where}: fewer training samples than one batch")
    return max(1, round(steps / batches))


def config_values(files: Sequence[str]) -> ConfigParser:
    """The merged, unparsed configs ``files`` (relative to the bundle root), for reading plain values."""
    parser = ConfigParser()
    parser.read_config(ConfigParser.load_config_files([str(BUNDLE_ROOT / f) for f in files]))
    return parser


def bundle_run(configs: Sequence[str], overrides: Mapping[str, object]) -> list[str]:
    """``python -m monai.bundle run`` of ``configs`` (later ones override) with ``--key value`` overrides."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(list(configs))]
    command += ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf"]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


def shell_line(command: Sequence[str]) -> str:
    """``command`` as a shell line; a word holding single quotes only is double-quoted, as the docs write
    ``--config_file "['configs/pretrain.yaml', 'configs/cpu.yaml']"``."""
    words = []
    for word in command:
        quoted = shlex.quote(word)
        if quoted != word and not set(word) & set('"$`\\!'):
            quoted = f'"{word}"'
        words.append(quoted)
    return " ".join(words)


def name_of(fraction: float) -> str:
    """A fraction in folder and stage names: ``f0.1``, ``f1``."""
    return f"f{fraction:g}"


class Planner:
    """Builds the :class:`Plan` of a study from the parsed arguments (reads files, writes none)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work_dir).resolve()
        self.dataset_dir = Path(args.dataset_dir).resolve()
        self.source = read_datalist(Path(args.datalist or self.dataset_dir / "datalist.json"))
        self.prompts = dataset_prompts(load_registry(self.dataset_dir / "datasets.yaml"))
        self.train_configs = [*TRAIN_CONFIGS, *args.train_config]
        self.ssl_configs = [*SSL_CONFIGS, *args.train_config]
        self.eval_configs = [*EVAL_CONFIGS, *args.eval_config]
        config = config_values(self.train_configs)
        self.batch_size, self.epochs = int(config["batch_size"]), int(config["epochs"])
        self.val_interval = int(config["val_interval"])
        self.rampup_epochs = int(config["consistency_rampup_epochs"])
        self.share = float(config["unlabelled_share"])
        self.image_size = int(config["image_size"])
        self.ssl_batch_size = int(config_values(self.ssl_configs)["batch_size"])
        full = supervised_batches(self.source["training"], self.batch_size)
        self.steps = args.steps or self.epochs * full
        self.ssl_steps = args.ssl_steps or self.steps
        self.extras = [PoolFolder(Path(d).resolve(), organ, kind) for d, organ, kind in args.unlabelled]
        self.extra_images = sum(len(folder_samples(folder.dir)) for folder in self.extras)
        self.plan = Plan()

    def build(self) -> Plan:
        args = self.args
        for fraction in args.fractions:
            for seed in self.seeds_for(fraction):
                for method in sorted(set(args.methods), key=method_order):  # scratch before the U-Net it budgets
                    self.plan.cells.append(self.cell(method, fraction, seed))
        if args.ablations:
            fraction = args.ablation_fraction if args.ablation_fraction is not None else min(args.fractions)
            for variant in ABLATIONS:
                self.plan.cells.append(self.cell(variant, fraction, args.seeds[0]))
        self.plan.settings = self.settings()
        return self.plan

    def seeds_for(self, fraction: float) -> list[int]:
        """Every seed for the fractions of ``--seed_fractions`` (all when not given), else the first."""
        chosen = self.args.seed_fractions
        if chosen is None or any(math.isclose(fraction, f) for f in chosen):
            return list(self.args.seeds)
        return list(self.args.seeds[:1])

    def subset(self, fraction: float, seed: int) -> tuple[Subset, Path, list[PoolFolder]]:
        """The subset, its datalist path and its unlabelled pool folders (left-out images, then extras)."""
        subset = make_subset(self.source["training"], fraction, seed)
        folder = self.work / "subsets" / f"seed{seed}" / name_of(fraction)
        datalist = folder / "datalist.json"
        splits = {"training": subset.training, "validation": self.source["validation"], "test": self.source["test"]}
        self.plan.datalists[datalist] = splits
        pool = []
        for dataset, images in subset.left_out.items():
            if images:
                self.plan.links[folder / "unlabelled" / dataset] = images
                pool.append(PoolFolder(folder / "unlabelled" / dataset, *self.prompts[dataset]))
        return subset, datalist, pool + self.extras

    def ssl_encoder(self, seed: int, variant: str) -> tuple[str | None, Path, int]:
        """The stage that trains the ``variant`` encoder of ``seed`` (none for ``--ssl_ckpt``), its file, its images."""
        cases = training_cases(self.source["training"])
        images = sum(len(c) for c in cases.values()) + self.extra_images
        if variant == SSL and self.args.ssl_ckpt:
            return None, Path(self.args.ssl_ckpt).resolve(), 0
        key = f"ssl-pretrain/{variant}/seed{seed}"
        folder = self.work / "ssl" / variant / f"seed{seed}"
        if key not in self.plan.stages:
            pool = []
            for dataset, dataset_cases in cases.items():
                self.plan.links[self.work / "pool" / dataset] = list(dataset_cases.values())
                pool.append(PoolFolder(self.work / "pool" / dataset, *self.prompts[dataset]))
            epochs = epochs_for(self.ssl_steps, math.ceil(images / self.ssl_batch_size), key)
            overrides = {
                "unlabelled_dirs": repr([entry.entry() for entry in pool + self.extras]),
                "seed": seed, "epochs": epochs, "ckpt_dir": folder / "models", "output_dir": folder / "runs",
                **ABLATIONS.get(variant, {}),
            }  # fmt: skip
            title = f"SSL encoder '{variant}', seed {seed}: {images} images, {epochs} epochs"
            self.plan.stages[key] = Stage(key, title, bundle_run(self.ssl_configs, overrides), folder)
        return key, folder / "models" / "ssl_encoder.pt", images

    def cell(self, method: str, fraction: float, seed: int) -> Cell:
        subset, datalist, pool = self.subset(fraction, seed)
        cell = Cell(method, fraction, seed, subset.labelled)
        folder = self.work / "cells" / method / name_of(fraction) / f"seed{seed}"
        where = f"{method} at {fraction:g}, seed {seed}"
        if method == UNET:
            self.unet_stages(cell, folder, datalist, where)
            return cell
        overrides: dict[str, object] = {
            "dataset_dir": self.dataset_dir, "datalist": datalist, "seed": seed,
            "ckpt_dir": folder / "train" / "models", "output_dir": folder / "train" / "runs",
        }  # fmt: skip
        unlabelled = 0
        if method == CONSISTENCY:
            unlabelled = sum(len(images) for images in subset.left_out.values()) + self.extra_images
            if not unlabelled:
                cell.note = "no unlabelled image at this fraction"
                return cell
            cell.consistency_images = unlabelled
            overrides["unlabelled_dirs"] = repr([entry.entry() for entry in pool])
            overrides["consistency_weight"] = self.args.consistency_weight
        needs: tuple[str, ...] = ()
        if method != SCRATCH:
            key, encoder, cell.ssl_images = self.ssl_encoder(seed, SSL if method == CONSISTENCY else method)
            cell.ssl_stage, needs = key, (key,) if key else ()
            overrides["init_ckpt"] = encoder
        batches = supervised_batches(subset.training, self.batch_size, unlabelled, self.share)
        cell.epochs = epochs_for(self.steps, batches, where)
        cell.steps = cell.epochs * batches
        overrides["epochs"] = cell.epochs
        overrides["val_interval"] = self.scaled(self.val_interval, cell.epochs)
        if method == CONSISTENCY:
            overrides["consistency_rampup_epochs"] = self.scaled(self.rampup_epochs, cell.epochs)
        cell.train = f"{method}/{name_of(fraction)}/seed{seed}/train"
        title = f"train {where}: {cell.epochs} epochs = {cell.steps} steps"
        self.plan.stages[cell.train] = Stage(
            cell.train, title, bundle_run(self.train_configs, overrides), folder / "train", needs
        )
        cell.evaluation = f"{method}/{name_of(fraction)}/seed{seed}/evaluate"
        evaluation = {
            "dataset_dir": self.dataset_dir, "datalist": datalist, "split": "test",
            "ckpt_path": folder / "train" / "models" / "model.pt", "eval_dir": folder / "evaluate",
        }  # fmt: skip
        self.plan.stages[cell.evaluation] = Stage(
            cell.evaluation, f"evaluate {where}", bundle_run(self.eval_configs, evaluation), folder / "evaluate",
            (cell.train,),
        )  # fmt: skip
        cell.result = folder / "evaluate" / "metrics.csv"
        return cell

    def unet_stages(self, cell: Cell, folder: Path, datalist: Path, where: str) -> None:
        """The U-Net stage (it evaluates too): ``--minutes`` from the scratch stage, or ``--unet_minutes``."""
        cell.train = cell.evaluation = f"{UNET}/{name_of(cell.fraction)}/seed{cell.seed}/train"
        cell.result = folder / "train" / "unet.json"
        command = [
            sys.executable, "-m", "benchmarks.unet_baseline", "--dataset_dir", str(self.dataset_dir),
            "--datalist", str(datalist), "--seed", str(cell.seed), "--clock", "process",
            "--image_size", str(self.image_size), "--batch_size", str(self.batch_size),
            "--threads", str(self.args.threads), "--json", str(cell.result),
        ]  # fmt: skip
        scratch = f"{SCRATCH}/{name_of(cell.fraction)}/seed{cell.seed}/train"
        if self.args.unet_minutes is not None:
            command += ["--minutes", f"{self.args.unet_minutes:g}"]
            stage = Stage(cell.train, f"{where}: {self.args.unet_minutes:g} CPU minutes", command, folder / "train")
        elif scratch in self.plan.stages:
            title = f"{where}: the CPU minutes of '{scratch}'"
            stage = Stage(cell.train, title, command, folder / "train", (scratch,), minutes_from=scratch)
        else:
            raise ValueError(f"{where}: no scratch cell before it to match its budget; give --unet_minutes")
        self.plan.stages[cell.train] = stage

    def scaled(self, value: int, epochs: int) -> int:
        """A setting counted in epochs, moved from the configs' epochs to ``epochs`` (at least 1)."""
        return max(1, round(value * epochs / self.epochs))

    def settings(self) -> dict:
        args = self.args
        return {
            "fractions": list(args.fractions), "seeds": list(args.seeds), "seed_fractions": args.seed_fractions,
            "methods": list(args.methods), "ablations": bool(args.ablations),
            "steps": self.steps, "ssl_steps": self.ssl_steps, "batch_size": self.batch_size,
            "ssl_batch_size": self.ssl_batch_size, "train_configs": self.train_configs,
            "ssl_configs": self.ssl_configs, "eval_configs": self.eval_configs,
            "unlabelled": [entry.entry() for entry in self.extras], "unlabelled_images": self.extra_images,
            "ssl_ckpt": args.ssl_ckpt, "consistency_weight": args.consistency_weight,
            "unet_minutes": args.unet_minutes, "threads": args.threads, "dataset_dir": str(self.dataset_dir),
            "machine": machine(),
        }  # fmt: skip


def build_plan(args: argparse.Namespace) -> Plan:
    """The stages and cells of the study ``args`` describe, without writing anything."""
    return Planner(args).build()


def prepare(plan: Plan) -> None:
    """Write the subsets' datalists and link the pool images into their folders (fresh each time)."""
    for path, splits in plan.datalists.items():
        write_datalist(path, splits)
    for folder, images in plan.links.items():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for image in images:
            (folder / image.name).symlink_to(image)


def resolved_command(stage: Stage, records: Mapping[str, dict]) -> list[str]:
    """The stage's command, with ``--minutes`` the CPU minutes of its ``minutes_from`` stage when it has one."""
    if stage.minutes_from is None:
        return list(stage.command)
    return [*stage.command, "--minutes", f"{records[stage.minutes_from]['cpu_s'] / 60:.4f}"]


def stage_env(threads: int) -> dict[str, str]:
    """The subprocesses' environment: ``threads`` intra-op threads, the bundle root importable."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BUNDLE_ROOT), env.get("PYTHONPATH")]))
    return env


def run_stage(stage: Stage, records: Mapping[str, dict], env: Mapping[str, str]) -> dict:
    """Run ``stage`` (unless its ``stage.json`` records a success of the same command); its record:
    command, returncode, wall_s, cpu_s (the subprocess's user + system time, all threads)."""
    missing = [key for key in stage.needs if records.get(key, {}).get("returncode") != 0]
    if missing:
        return {"command": stage.command, "returncode": None, "note": f"not run: {', '.join(missing)} did not succeed"}
    command = resolved_command(stage, records)
    marker = stage.folder / "stage.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("returncode") == 0 and done.get("command") == command:
            print(f"=== {stage.title}: done before ({marker})", flush=True)
            return done
    stage.folder.mkdir(parents=True, exist_ok=True)
    log = stage.folder / "log.txt"
    print(f"\n=== {stage.title}\n$ {shell_line(command)}", flush=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        finished = subprocess.run(command, check=False, cwd=BUNDLE_ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    returncode = finished.returncode
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - start
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    record = {"command": command, "returncode": returncode, "wall_s": wall, "cpu_s": cpu, "log": str(log)}
    marker.write_text(json.dumps(record, indent=1) + "\n")
    outcome = "done" if returncode == 0 else f"FAILED (exit {returncode}), see {log}"
    print(f"=== {stage.title}: {outcome} in {wall:.0f} s ({cpu:.0f} CPU s)", flush=True)
    return record


def read_scores(path: Path | None) -> dict[str, dict[str, float]]:
    """dataset -> {"dice", "seg_n"} of an evaluation: evaluate.yaml's metrics.csv, or the U-Net tool's
    JSON (``.json``); {} when there is no such file."""
    if path is None or not path.is_file():
        return {}
    if path.suffix == ".json":
        trained = json.loads(path.read_text())["trained"]
        return {d: {"dice": row["dice"], "seg_n": row["seg_n"]} for d, row in trained.items() if "dice" in row}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["dataset"] != "mean" and row["seg_n"]]
    return {row["dataset"]: {"dice": float(row["dice"]), "seg_n": int(row["seg_n"])} for row in rows}


def cell_row(cell: Cell, records: Mapping[str, dict]) -> dict:
    """The cell's entry of results.json."""
    train = records.get(cell.train, {})
    evaluation = records.get(cell.evaluation, {})
    scores = read_scores(cell.result) if evaluation.get("returncode") == 0 else {}
    note = cell.note or ("" if scores else evaluation.get("note") or f"failed: see {evaluation.get('log')}")
    return {
        "method": cell.method, "fraction": cell.fraction, "seed": cell.seed, "labelled": cell.labelled,
        "ssl_images": cell.ssl_images, "consistency_images": cell.consistency_images,
        "epochs": cell.epochs, "steps": cell.steps,
        "train_cpu_s": train.get("cpu_s"), "train_wall_s": train.get("wall_s"),
        "ssl_cpu_s": records.get(cell.ssl_stage or "", {}).get("cpu_s"),
        "dice": {d: v["dice"] for d, v in scores.items()}, "seg_n": {d: v["seg_n"] for d, v in scores.items()},
        "stages": [key for key in (cell.ssl_stage, cell.train, cell.evaluation) if key], "note": note,
    }  # fmt: skip


def spread(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation) of ``values``; the value alone for one; a dash for none."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return "–"
    if len(kept) == 1:
        return f"{kept[0]:.3f}"
    return f"{statistics.fmean(kept):.3f} ± {statistics.stdev(kept):.3f}"


def method_order(method: str) -> int:
    """Rank of a method in tables and runs: METHODS, then the ablations."""
    order = [*METHODS, *ABLATIONS]
    return order.index(method) if method in order else len(order)


def scored_datasets(rows: Sequence[Mapping]) -> list[str]:
    """The datasets with a test Dice in any row (those with labelled images when none has one yet)."""
    return sorted({d for row in rows for d in row["dice"]} or {d for row in rows for d in row["labelled"]})


def table(rows: Sequence[Mapping]) -> str:
    """Markdown: a row per (fraction, method), test Dice per dataset and their mean over seeds (mean ± sd),
    the labelled images per dataset, and the mean CPU minutes of the training stage."""
    datasets = scored_datasets(rows)
    groups: dict[tuple[float, str], list[Mapping]] = defaultdict(list)
    for row in rows:
        groups[(row["fraction"], row["method"])].append(row)
    lines = [
        "| labels | images (" + " / ".join(datasets) + ") | method | seeds | "
        + " | ".join(f"{d} Dice" for d in datasets) + " | mean Dice | train CPU min |",
        "|---" * (len(datasets) + 6) + "|",
    ]  # fmt: skip
    for (fraction, method), members in sorted(groups.items(), key=lambda item: (item[0][0], method_order(item[0][1]))):
        scored = [r for r in members if r["dice"] and all(d in r["dice"] for d in datasets)]
        per_dataset = [spread([r["dice"][d] for r in scored]) for d in datasets]
        mean = spread([statistics.fmean(r["dice"][d] for d in datasets) for r in scored])
        minutes = [r["train_cpu_s"] / 60 for r in members if r["train_cpu_s"] is not None]
        cpu = f"{statistics.fmean(minutes):.1f}" if minutes else "–"
        images = " / ".join(str(members[0]["labelled"].get(d, 0)) for d in datasets)
        seeds = f"{len(scored)}" if len(scored) == len(members) else f"{len(scored)} of {len(members)}"
        scores = " | ".join(per_dataset)
        lines.append(f"| {100 * fraction:g} % | {images} | {method} | {seeds} | {scores} | {mean} | {cpu} |")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping], path: Path) -> None:
    """Test Dice against the labelled fraction, one panel per dataset and the mean, one line per method
    (mean and standard deviation over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = scored_datasets(rows)
    panels = [*datasets, "mean"]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), sharey=True)
    for method in sorted({row["method"] for row in rows}, key=method_order):
        for axis, panel in zip(axes, panels):
            points = defaultdict(list)
            for row in rows:
                if row["method"] == method and all(d in row["dice"] for d in datasets):
                    value = statistics.fmean(row["dice"].values()) if panel == "mean" else row["dice"][panel]
                    points[row["fraction"]].append(value)
            if not points:
                continue
            fractions = sorted(points)
            means = [statistics.fmean(points[f]) for f in fractions]
            errors = [statistics.stdev(points[f]) if len(points[f]) > 1 else 0.0 for f in fractions]
            # an ablation is one cell beside its method's line: a cross, apart from the lines
            marker = "o" if method in METHODS else "x"
            axis.errorbar([100 * f for f in fractions], means, yerr=errors, marker=marker, capsize=3, label=method)
    percents = sorted({100 * row["fraction"] for row in rows})
    for axis, panel in zip(axes, panels):
        axis.set_xscale("log")
        axis.set_xticks(percents, [f"{p:g}" for p in percents])
        axis.minorticks_off()
        axis.set_title(panel)
        axis.set_xlabel("labelled training images (%)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test Dice per image")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def dry_run_text(plan: Plan) -> str:
    """The stages' commands as shell lines, each after a comment with its title."""
    settings = plan.settings
    budget = f"{settings['steps']} steps per supervised stage, {settings['ssl_steps']} per SSL stage"
    lines = [f"# {len(plan.cells)} cells, {len(plan.stages)} stages; {budget}"]
    for cell in plan.cells:
        if cell.note:
            lines.append(f"# {cell.method} at {cell.fraction:g}, seed {cell.seed}: not run, {cell.note}")
    for stage in plan.stages.values():
        command = list(stage.command)
        if stage.minutes_from:
            command += ["--minutes", f"<CPU minutes of {stage.minutes_from}>"]
        lines += [f"# {stage.title}", shell_line(command)]
    return "\n".join(lines)


def run_plan(plan: Plan, threads: int) -> dict:
    """Prepare the files, run every stage in order, and return results.json's content."""
    prepare(plan)
    env = stage_env(threads)
    records: dict[str, dict] = {}
    for stage in plan.stages.values():
        records[stage.key] = run_stage(stage, records, env)
    return {"settings": plan.settings, "cells": [cell_row(cell, records) for cell in plan.cells], "stages": records}


def merged_cells(paths: Sequence[Path]) -> list[dict]:
    """The cells of several results files, one per (method, fraction, seed): a later file's row wins."""
    cells: dict[tuple, dict] = {}
    for path in paths:
        for row in json.loads(Path(path).read_text())["cells"]:
            cells[(row["method"], row["fraction"], row["seed"])] = row
    return list(cells.values())


def write_report(cells: Sequence[Mapping], markdown: str | None, plot_path: str | None) -> str:
    """Print the table of ``cells``; also write it to ``markdown`` and draw it to ``plot_path`` when given."""
    text = table(cells)
    print(f"\n{text}\n")
    if markdown:
        Path(markdown).write_text(text + "\n")
    if plot_path:
        plot(cells, Path(plot_path))
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", default=str(DEMO_DATA), help="the registry's folder (datasets.yaml)")
    parser.add_argument("--datalist", help="the source datalist JSON (default: DATASET_DIR/datalist.json)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--seed_fractions", type=float, nargs="+", help="fractions run with every seed (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--ablations", action="store_true", help="also the ssl cell with each SSL term off")
    parser.add_argument("--ablation_fraction", type=float, help="the ablations' fraction (default: the smallest)")
    parser.add_argument(
        "--unlabelled", nargs=3, action="append", default=[], metavar=("DIR", "ORGAN", "OBJECT_TYPE"),
        help="an extra unlabelled folder and its images' prompts (repeatable)",
    )  # fmt: skip
    parser.add_argument("--ssl_ckpt", help="an SSL encoder for the ssl cells (default: the tool trains one per seed)")
    parser.add_argument("--consistency_weight", type=float, default=1.0)
    parser.add_argument(
        "--steps", type=int, help="optimisation steps per supervised stage (default: the configs' epochs on all labels)"
    )
    parser.add_argument("--ssl_steps", type=int, help="optimisation steps per SSL stage (default: --steps)")
    parser.add_argument("--unet_minutes", type=float, help="CPU minutes per U-Net cell (default: its scratch cell's)")
    parser.add_argument("--train_config", nargs="+", default=[], help="config files layered on every training stage")
    parser.add_argument("--eval_config", nargs="+", default=[], help="config files layered on evaluate.yaml")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="OMP_NUM_THREADS of every stage")
    parser.add_argument("--work_dir", default=str(BUNDLE_ROOT / "runs" / "label_efficiency"))
    parser.add_argument("--json", help="results file (default: WORK_DIR/results.json)")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--plot", help="write a PNG of Dice against the labelled fraction here (needs matplotlib)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run and write nothing")
    parser.add_argument(
        "--merge", nargs="+", metavar="RESULTS_JSON",
        help="run nothing: one table (and plot) of these results files' cells, e.g. of a study run in parts",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the study (or print it with ``--dry-run``); returns results.json's content, or with
    ``--merge`` only the merged cells."""
    args = parse_args(argv)
    if args.merge:
        cells = merged_cells(args.merge)
        write_report(cells, args.markdown, args.plot)
        return {"cells": cells}
    plan = build_plan(args)
    if args.dry_run:
        print(dry_run_text(plan))
        return None
    results = run_plan(plan, args.threads)
    output = Path(args.json or Path(args.work_dir) / "results.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    write_report(results["cells"], args.markdown, args.plot)
    print(f"results: {output}")
    failed = [key for key, record in results["stages"].items() if record.get("returncode") != 0]
    if failed:
        raise SystemExit(f"{len(failed)} stages did not succeed: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
