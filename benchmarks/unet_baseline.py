"""The plain alternative of issue 6: a MONAI ``UNet`` trained jointly on the demo segmentation sets.

A 2D ``monai.networks.nets.UNet`` (channels 16-256, 2 residual units, 1.63 M parameters) is
trained on the training split of every segmentation dataset of the registry at once (or on the
lists of a ``--datalist`` JSON; prompts ignored; classification datasets left out), with Dice +
CE and Adam, for a fixed time budget (wall clock, or this process's CPU time with ``--clock
process``), and evaluated per image on the test split with the bundle's own metric code
(``bundle.workflows.metrics``: Dice per image, empty ground truth excluded, per dataset) at the
network input resolution (``bundle.transforms.val_transforms``). The untrained model (same
initial weights) is evaluated first, so one run prints both rows. More than one ``--split``
scores the trained model on each (the first is the table's; ``train`` shows how far it fits).

``--network swinunetr`` trains MONAI's 2D SwinUNETR (``--feature_size``, default 24) by the same
recipe: a Swin encoder with convolutional skips and decoder, the hybrid the bundle's
``conv_skips`` option borrows from. ``--network perceptguide`` trains the bundle's own network (``network_def`` of
``--network_configs``, default pretrain.yaml + cpu.yaml, prompts on) by this recipe instead:
loss, optimiser, schedule, whole images and official augmentation of the U-Net. Set beside the
bundle's pretrain recipe, it tells whether the network or the recipe holds the fit back.

Data and augmentation are the bundle's: ``train_transforms`` (official flip / rotate / zoom
cascade) and the 1/sqrt(n) dataset-weighted sampler. By default every training image is seen
whole (``--input_mode whole``): a network without a mode prompt cannot tell a local crop from a
whole image, and the test split is whole; ``--input_mode official`` keeps PerceptGuide's 50 %
local crops. The learning rate decays polynomially (power 0.9) over the elapsed fraction of the
budget, the time analogue of the bundle's per-iteration schedule.

Usage::

    python -m benchmarks.unet_baseline [--minutes 12 | --steps N] [--clock wall|process] [--dataset_dir data/demo] \\
        [--registry_file FILE.yaml] [--datalist FILE.json ...] [--image_size 160] [--batch_size 16] [--lr 1e-3] [--letterbox_prob P] \\
        [--threads 2] [--init unet.pt] [--save unet.pt] [--json out.json] [--split test train] \\
        [--network unet|swinunetr|perceptguide] [--feature_size 24] [--network_configs configs/pretrain.yaml configs/cpu.yaml]

``--save`` writes the trained weights (the U-Net's state dict; the bundle's network as a bundle
checkpoint that evaluate.yaml and the inference command read); ``--init`` starts from such a file
(the transfer baseline of issue 24: a U-Net trained on the demo datasets, then fine-tuned on a few
images of a new dataset).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from monai.networks.nets import SwinUNETR, UNet
from monai.transforms import Compose
from monai.utils import set_determinism

from benchmarks import DEMO_DATA
from benchmarks.label_efficiency import config_values
from bundle.data import load_registry, load_samples, weighted_sampler
from bundle.data.registry import DatasetRegistry
from bundle.networks import describe, initialise_from, save_checkpoint
from bundle.transforms import RandPromptModed, train_transforms, val_transforms, verify_samples
from bundle.transforms.prompt_mode import MODE_PROBABILITIES, WHOLE
from bundle.prompts import SEGMENTATION
from bundle.workflows.batch import PreparePromptBatch
from bundle.workflows.metrics import SampleRecord, segmentation_scores, summarise

INPUT_MODES = ("whole", "official")
NETWORKS = ("unet", "swinunetr", "perceptguide")
NETWORK_LABELS = {"unet": "U-Net", "swinunetr": "SwinUNETR", "perceptguide": "PerceptGuide"}
PERCEPTGUIDE_CONFIGS = ("configs/pretrain.yaml", "configs/cpu.yaml")  # relative to the bundle root


def build_unet(seg_classes: int) -> UNet:
    """The issue's U-Net: 2D, RGB in, 5 levels 16-256 channels, 2 residual units (1,625,737 params at 2 classes)."""
    return UNet(
        spatial_dims=2,
        in_channels=3,
        out_channels=seg_classes,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
    )


def build_swinunetr(seg_classes: int, feature_size: int) -> SwinUNETR:
    """MONAI's 2D SwinUNETR, RGB in: a Swin encoder (patch 2, window 7) with convolutional skip blocks
    at every scale and a convolutional decoder; no prompts. Inputs must be multiples of 32."""
    return SwinUNETR(in_channels=3, out_channels=seg_classes, feature_size=feature_size, spatial_dims=2)


# (image, label, network args, network kwargs) of a batch, as MONAI's engines take a prepare_batch
Prepared = tuple[torch.Tensor, torch.Tensor, tuple, dict]


class SegmentationLogits(torch.nn.Module):
    """A PerceptGuide as a plain segmentation network: ``forward(image (B, 3, H, W), prompts)`` ->
    seg logits (B, C, H, W), its classification logits dropped (this recipe has no class labels)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor, prompts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(image, prompts)[0]


def build_perceptguide(config_files: Sequence[str], registry: DatasetRegistry, image_size: int) -> SegmentationLogits:
    """``network_def`` of the bundle configs ``config_files`` (relative to the bundle root, later files
    override) at ``image_size``, for ``registry``."""
    parser = config_values(config_files)
    parser["image_size"] = image_size
    parser["registry"] = registry
    return SegmentationLogits(parser.get_parsed_content("network_def", instantiate=True))


def build_network(args: argparse.Namespace, registry: DatasetRegistry) -> torch.nn.Module:
    """The U-Net, MONAI's SwinUNETR (``--network swinunetr``), or the bundle's network as ``SegmentationLogits``."""
    if args.network == "perceptguide":
        return build_perceptguide(args.network_configs, registry, args.image_size)
    if args.network == "swinunetr":
        if args.image_size % 32 or args.feature_size % 12:
            raise ValueError(f"SwinUNETR needs an input size that is a multiple of 32 and a feature size that is a "
                             f"multiple of 12, got {args.image_size} and {args.feature_size}")  # fmt: skip
        return build_swinunetr(registry.num_seg_classes, args.feature_size)
    return build_unet(registry.num_seg_classes)


def prepare_plain(
    batchdata: Mapping[str, Any], device: torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> Prepared:
    """``(image (B, 3, H, W), label (B, 1, H, W), (), {})``: the U-Net's call and its loss's target."""
    image, label = (
        torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking, **kwargs) for key in ("image", "label")
    )
    return image, label, (), {}


def prepare_prompted(
    batchdata: Mapping[str, Any], device: torch.device | None = None, non_blocking: bool = False, **kwargs: Any
) -> Prepared:
    """``(image (B, 3, H, W), label (B, 1, H, W), (prompts,), {})``: the prompted network's call and
    the loss's target; ``prompts`` as ``PreparePromptBatch`` gives them (one-hot, (B, n) each)."""
    image, targets, args, extra = PreparePromptBatch()(batchdata, device, non_blocking, **kwargs)
    return image, targets["label"], args, extra


def preparer(network: torch.nn.Module) -> Callable[..., Prepared]:
    """How a batch feeds ``network``: with its prompts when it is the bundle's network."""
    return prepare_prompted if isinstance(network, SegmentationLogits) else prepare_plain


def save_weights(network: torch.nn.Module, path: Path, registry: DatasetRegistry, image_size: int) -> None:
    """The trained weights: the bundle's network as a self-describing checkpoint (evaluate.yaml,
    the inference command and ``--init_ckpt`` read it), the U-Net or SwinUNETR as its state dict."""
    if isinstance(network, SegmentationLogits):
        save_checkpoint(path, network.network, describe(network.network, registry, image_size))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)


def load_weights(network: torch.nn.Module, path: Path) -> None:
    """Start ``network`` from a ``save_weights`` file (for the bundle's network: any bundle checkpoint)."""
    if isinstance(network, SegmentationLogits):
        initialise_from(network.network, path)
    else:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def segmentation_samples(registry: DatasetRegistry, split: str, datalist: str | Path | None = None) -> list[dict]:
    """The segmentation samples of ``split`` (classification datasets left out), from ``datalist``
    (a MONAI datalist JSON) when given, else from the registry's folders."""
    kept = [s for s in load_samples(registry, split, datalist) if s["task"] == "segmentation"]
    if not kept:
        raise ValueError(f"no segmentation samples in split '{split}' of {datalist or 'the registry'}")
    return verify_samples(kept, registry)


def unet_train_transforms(
    image_size: int, registry: DatasetRegistry, input_mode: str, letterbox_prob: float = 0.0
) -> Compose:
    """The bundle's training chain; with ``input_mode="whole"`` its random input mode always picks whole;
    ``letterbox_prob`` of the samples are resized as the inference command resizes them."""
    chain = train_transforms(image_size, registry, letterbox_prob=letterbox_prob)
    if input_mode == "official":
        return chain
    if input_mode != "whole":
        raise ValueError(f"input_mode must be one of {list(INPUT_MODES)}, got '{input_mode}'")
    whole_only = {task: {WHOLE: 1.0} for task in MODE_PROBABILITIES}
    return Compose([RandPromptModed(whole_only) if isinstance(t, RandPromptModed) else t for t in chain.transforms])


def evaluate(network: torch.nn.Module, loader: DataLoader, seg_classes: int) -> dict[str, dict]:
    """Per-dataset mean Dice / HD95 per image (the bundle's ``summarise``) of ``network`` on ``loader``,
    each dataset's entry with ``per_image``: image file stem -> Dice of the ``seg_n`` images scored (as
    ``inference_dice`` writes it)."""
    records = []
    per_image: dict[str, dict[str, float]] = {}
    network.eval()
    prepare = preparer(network)
    with torch.inference_mode():
        for batch in loader:
            image, label, args, _ = prepare(batch)
            pred = network(image, *args).argmax(1)  # (B, H, W)
            labels = label[:, 0]
            dice, hd95 = segmentation_scores(pred, labels, seg_classes)
            files = batch["image"].meta["filename_or_obj"]
            for dataset, file, image_dice, image_hd95 in zip(batch["dataset"], files, dice, hd95):
                records.append(SampleRecord(dataset, SEGMENTATION, dice=image_dice, hd95=image_hd95))
                if not math.isnan(image_dice):  # an empty ground truth has no Dice (``summarise`` leaves it out)
                    per_image.setdefault(dataset, {})[Path(file).stem] = round(float(image_dice), 4)
    table, _ = summarise(records)
    return {dataset: {**figures, "per_image": per_image.get(dataset, {})} for dataset, figures in table.items()}


CLOCKS = {"wall": time.monotonic, "process": time.process_time}


def attach_budget(
    trainer: Engine, optimizer: torch.optim.Optimizer, lr: float, seconds: float, clock: str = "wall", steps: int | None = None
) -> None:
    """After every iteration: lr = lr0 · (1 - spent)^0.9; stop once the budget is spent.

    The budget is ``steps`` iterations when given (a reproducible run), else ``seconds`` of
    ``clock``: ``"process"`` counts this process's CPU seconds (all its threads) instead of wall
    time: on a machine shared with other jobs, one thread and a process-time budget give the
    training a quiet core would do in that wall time.
    """
    now = CLOCKS[clock]
    start = now()

    def spent(engine: Engine) -> float:
        return engine.state.iteration / steps if steps else (now() - start) / seconds

    def step(engine: Engine) -> None:
        fraction = spent(engine)
        if fraction >= 1.0:
            engine.terminate()
            return
        for group in optimizer.param_groups:
            group["lr"] = lr * (1.0 - fraction) ** 0.9

    trainer.add_event_handler(Events.ITERATION_COMPLETED, step)


def run(args: argparse.Namespace) -> dict:
    """Train for the budget, evaluate before and after; returns the figures (also for ``--json``)."""
    torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)
    registry = load_registry(args.registry_file or Path(args.dataset_dir) / "datasets.yaml")
    classes = registry.num_seg_classes
    train = segmentation_samples(registry, "train", args.datalist)
    train_chain = unet_train_transforms(args.image_size, registry, args.input_mode, args.letterbox_prob)
    train_ds = CacheDataset(train, train_chain, num_workers=0)
    train_loader = DataLoader(
        train_ds, batch_size=args.batch_size, drop_last=True,
        # at least one batch per epoch: a few images (fewer than a batch) still train
        sampler=weighted_sampler(train, seed=args.seed, num_samples=max(len(train), args.batch_size)),
    )
    test_chain = val_transforms(args.image_size, registry, geometry=args.geometry)
    loaders = {
        split: DataLoader(Dataset(segmentation_samples(registry, split, args.datalist), test_chain), batch_size=16)
        for split in args.split
    }
    test_loader = loaders[args.split[0]]

    network = build_network(args, registry)
    if args.init:
        load_weights(network, Path(args.init))
    untrained = evaluate(network, test_loader, classes)

    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=10**6,  # the time budget stops training
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        prepare_batch=preparer(network),
    )
    attach_budget(trainer, optimizer, args.lr, args.minutes * 60, args.clock, args.steps)
    start, cpu_start = time.monotonic(), time.process_time()
    trainer.run()
    seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
    trained = evaluate(network, test_loader, classes)
    other_splits = {split: evaluate(network, loaders[split], classes) for split in args.split[1:]}
    if args.save:
        save_weights(network, Path(args.save), registry, args.image_size)
    iterations = trainer.state.iteration
    return {
        "parameters": sum(p.numel() for p in network.parameters()),
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "iterations": iterations,
        "epochs": iterations / len(train_loader),
        "samples_per_second": iterations * args.batch_size / seconds,
        "untrained": untrained,
        "trained": trained,
        "trained_other_splits": other_splits,
        "args": vars(args),
    }


def table(result: dict) -> str:
    """Markdown table: one row per model, one column per dataset (mean Dice per image, n images of the
    first split); a row per further split the trained model was scored on."""
    datasets = sorted(result["trained"])
    head = "| model | " + " | ".join(f"{d} Dice (n={result['trained'][d]['seg_n']})" for d in datasets) + " | mean |"
    rows = [head, "|---" * (len(datasets) + 2) + "|"]
    steps = result["args"].get("steps")
    budget = f"{steps} steps" if steps else f"{result['args']['minutes']:g} min"
    network = NETWORK_LABELS[result["args"].get("network", "unet")]
    scored = {f"{network} untrained": result["untrained"], f"{network} {budget}": result["trained"]}
    for split, figures in result.get("trained_other_splits", {}).items():
        counts = "/".join(str(figures[d]["seg_n"]) for d in datasets)
        scored[f"{network} {budget}, {split} split (n={counts})"] = figures
    for label, figures in scored.items():
        dice = [figures[d]["dice"] for d in datasets]
        mean = sum(dice) / len(dice) if not any(math.isnan(v) for v in dice) else math.nan
        rows.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in dice) + f" | {mean:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset_dir", default=str(DEMO_DATA))
    parser.add_argument("--registry_file", help="the dataset registry (default: DATASET_DIR/datasets.yaml)")
    parser.add_argument(
        "--datalist", nargs="+", help="MONAI datalist JSON(s) of the splits (default: the registry's folders)"
    )
    parser.add_argument("--network", choices=NETWORKS, default="unet", help="what this recipe trains")
    parser.add_argument("--feature_size", type=int, default=24, help="SwinUNETR's first width (a multiple of 12)")
    parser.add_argument(
        "--network_configs", nargs="+", default=list(PERCEPTGUIDE_CONFIGS),
        help="bundle configs (relative to the bundle root) whose network_def --network perceptguide builds",
    )
    parser.add_argument("--init", help="start from this file: a --save of another run (the bundle's network: any checkpoint)")
    parser.add_argument("--save", help="write the trained weights here (the bundle's network: a bundle checkpoint)")
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget")
    parser.add_argument("--steps", type=int, help="train this many iterations instead of a time budget")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="what the budget counts")
    parser.add_argument("--image_size", type=int, default=160)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--input_mode", choices=INPUT_MODES, default="whole")
    parser.add_argument(
        "--letterbox_prob", type=float, default=0.0, help="share of training samples letterboxed (pretrain.yaml's)"
    )
    parser.add_argument("--geometry", choices=["crop", "letterbox"], default="crop", help="of the test images (evaluate.yaml's)")
    parser.add_argument("--split", nargs="+", default=["test"], help="scored splits; the first is the table's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if len(set(args.split)) < len(args.split):
        parser.error(f"--split names a split twice: {args.split}")
    result = run(args)
    print(
        f"{NETWORK_LABELS[args.network]} {result['parameters']:,} parameters: {result['iterations']} iterations "
        f"({result['epochs']:.1f} epochs) in {result['train_seconds']:.0f} s "
        f"({result['train_cpu_seconds']:.0f} CPU s), "
        f"{result['samples_per_second']:.1f} samples/s"
    )
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
