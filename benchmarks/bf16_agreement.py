"""How far a faster way of running a trained PerceptGuide moves its segmentation masks and class predictions.

Runs the evaluate config's network (trained weights from ``--ckpt_path``) over a split in eager
fp32 and in each ``--variants`` way: ``bf16`` (CPU bf16 autocast as ``PromptInferer`` applies it),
``onnxruntime`` (the exported graph run by ONNX Runtime, ``bundle.workflows.runtimes``) and
``int8`` (the same graph with ONNX Runtime's dynamic int8 matrix products). It prints per dataset
the share of segmentation pixels whose argmax class is the same as fp32's (a backend or precision
becomes a default only at 99.5 % or more), the largest change of a class probability, and the
seconds each pass took. The bf16 pass needs a CPU with native bf16 (AVX-512 BF16 or AMX), where
``PromptInferer`` uses it; elsewhere the script says so and stops.

Usage::

    python -m benchmarks.bf16_agreement [--config_file "['configs/evaluate.yaml','configs/cpu.yaml']"] \\
        [--ckpt_path models/pretrained.pt] [--split test] [--dataset_dir data/demo] [--threads 2] \\
        [--variants bf16 onnxruntime int8]
"""

from __future__ import annotations

import argparse
import ast
import time
from collections import defaultdict
from collections.abc import Sequence

import torch
from monai.bundle import ConfigParser

from benchmarks import BUNDLE_ROOT
from bundle.workflows.inferers import PromptInferer, cpu_supports_bf16
from bundle.workflows.runtimes import runtime_network
from bundle.prompts import SEGMENTATION, TASKS

DEFAULT_CONFIGS = "['configs/evaluate.yaml','configs/cpu.yaml']"
VARIANTS = ("bf16", "onnxruntime", "int8")


def runners(parser: ConfigParser, variants: Sequence[str], threads: int) -> dict[str, tuple[torch.nn.Module, PromptInferer]]:
    """``none`` (eager fp32) and each variant: the network to call and the inferer that calls it."""
    network = parser.get_parsed_content("network")
    ckpt_path, size = parser.get_parsed_content("ckpt_path"), parser.get_parsed_content("input_size")
    chosen = {"none": (network, PromptInferer("none"))}
    for variant in variants:
        if variant == "bf16":
            chosen[variant] = (network, PromptInferer("bf16"))
        else:
            quantize = "int8" if variant == "int8" else "none"
            chosen[variant] = (runtime_network(network, "onnxruntime", ckpt_path, size, threads, quantize), PromptInferer("none"))
    return chosen


def predictions(
    parser: ConfigParser, variants: Sequence[str] = ("bf16",), threads: int = 1
) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Per way of running (``none`` = eager fp32, then ``variants``): per sample the dataset, task,
    seg argmax (H, W) and class probabilities; and the seconds the network took. Each batch is
    loaded once and run every way."""
    prepare_batch = parser.get_parsed_content("prepare_batch")
    ways = runners(parser, variants, threads)
    samples: dict[str, list[dict]] = {name: [] for name in ways}
    seconds = dict.fromkeys(ways, 0.0)
    with torch.inference_mode():
        for batch in parser.get_parsed_content("dataloader"):
            image, targets, (prompts,), _ = prepare_batch(batch, torch.device("cpu"))
            for precision, (network, inferer) in ways.items():
                start = time.perf_counter()
                seg_logits, cls_logits = inferer(image, network, prompts)
                seconds[precision] += time.perf_counter() - start
                samples[precision] += [
                    {
                        "dataset": dataset,
                        "task": TASKS[int(targets["task_id"][i])],
                        "mask": seg_logits[i].argmax(0),
                        "probabilities": cls_logits[i].softmax(0),
                    }
                    for i, dataset in enumerate(targets["dataset"])
                ]
    return samples, seconds


def agreement(fp32: list[dict], bf16: list[dict]) -> dict[str, dict[str, float]]:
    """Per dataset (and ``all``): pixel agreement of seg masks, largest class-probability change."""
    equal, pixels = defaultdict(int), defaultdict(int)
    probability_change: dict[str, float] = defaultdict(float)
    for a, b in zip(fp32, bf16):
        for group in (a["dataset"], "all"):
            if a["task"] == SEGMENTATION:
                equal[group] += int((a["mask"] == b["mask"]).sum())
                pixels[group] += a["mask"].numel()
            else:
                change = float((a["probabilities"] - b["probabilities"]).abs().max())
                probability_change[group] = max(probability_change[group], change)
    groups = sorted(set(pixels) | set(probability_change), key=lambda g: (g == "all", g))
    return {
        group: {
            "mask_agreement": equal[group] / pixels[group] if pixels[group] else float("nan"),
            "max_probability_change": probability_change.get(group, float("nan")),
        }
        for group in groups
    }


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Print and return variant -> dataset -> {mask_agreement, max_probability_change}."""
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--config_file", default=DEFAULT_CONFIGS)
    cli.add_argument("--ckpt_path", default="models/pretrained.pt")
    cli.add_argument("--split", default="test")
    cli.add_argument("--dataset_dir", help="default: the config's")
    cli.add_argument("--threads", type=int, default=2)
    cli.add_argument("--variants", nargs="+", choices=VARIANTS, default=["bf16"], help="compared with eager fp32")
    args = cli.parse_args(argv)
    if "bf16" in args.variants and not cpu_supports_bf16():
        raise SystemExit("this CPU lacks native bf16 (avx512_bf16 / amx_bf16): PromptInferer would run fp32 twice")
    torch.set_num_threads(args.threads)
    parser = ConfigParser()
    # one file, or a list of files as `monai.bundle run --config_file` takes it
    files = ast.literal_eval(args.config_file) if args.config_file.lstrip().startswith("[") else args.config_file
    parser.read_config(ConfigParser.load_config_files(files))
    overrides = {"ckpt_path": args.ckpt_path, "split": args.split, "num_workers": 0, "bundle_root": str(BUNDLE_ROOT)}
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    parser.update(overrides)
    samples, seconds = predictions(parser, args.variants, args.threads)
    tables = {variant: agreement(samples["none"], samples[variant]) for variant in args.variants}
    timing = ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())
    print(f"{args.ckpt_path}, split {args.split}: {timing} (network only; none = eager fp32)")
    print("| variant | dataset | seg mask pixels equal to fp32 | largest class-probability change |")
    print("|---|---|---:|---:|")
    for variant, table in tables.items():
        for group, row in table.items():
            print(f"| {variant} | {group} | {100 * row['mask_agreement']:.3f} % | {row['max_probability_change']:.4f} |")
    return tables


if __name__ == "__main__":
    main()
