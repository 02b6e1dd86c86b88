"""Latency of a checkpoint's network per backend: eager PyTorch, ONNX Runtime, ONNX Runtime int8.

One process, one thread count, the backends' calls interleaved round by round (so a slower or
busier stretch of the machine hits every backend alike); the median of ``--rounds`` calls per
backend and batch size, at the checkpoint's input size, on random images with one prompt. The
ONNX Runtime graph is exported at batch 1 (``bundle.workflows.runtimes``): its batch of B is B
calls. Ratios are against eager PyTorch of the same run.

Usage::

    python -m benchmarks.runtime_latency [--ckpt_path models/pretrained.pt] [--threads 2] [--batches 1 8] \\
        [--rounds 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine
from bundle.networks import read_checkpoint
from bundle.prompts import PromptVocabulary
from bundle.workflows.runtimes import runtime_network

BACKENDS = {"torch": ("torch", "none"), "onnxruntime": ("onnxruntime", "none"), "onnxruntime-int8": ("onnxruntime", "int8")}


def prompts_for(vocabulary: PromptVocabulary, batch: int) -> dict[str, torch.Tensor]:
    """The breast-lesion segmentation prompt for ``batch`` images."""
    encoded = vocabulary.encode({"position": "breast", "task": "segmentation", "mode": "whole", "type": "tumor"})
    return {key: value.expand(batch, -1).contiguous() for key, value in encoded.items()}


def time_call(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(ckpt_path: Path, threads: int, batches: Sequence[int], rounds: int) -> dict:
    """backend -> batch -> median milliseconds per call, and each ratio to eager torch."""
    torch.set_num_threads(threads)
    checkpoint = read_checkpoint(ckpt_path)
    network = checkpoint.build()
    size = checkpoint.description.image_size
    runners = {
        name: runtime_network(network, backend, ckpt_path, size, threads, quantize)
        for name, (backend, quantize) in BACKENDS.items()
    }
    medians: dict[str, dict[int, float]] = {name: {} for name in runners}
    with torch.inference_mode():
        for batch in batches:
            image = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            prompts = prompts_for(checkpoint.description.prompt_vocabulary, batch)
            for runner in runners.values():  # warm-up: first calls allocate and pick kernels
                runner(image, prompts)
            samples: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(rounds):
                for name, runner in runners.items():
                    samples[name].append(time_call(lambda: runner(image, prompts)))
            for name in runners:
                medians[name][batch] = 1000 * statistics.median(samples[name])
    ratios = {name: {b: medians["torch"][b] / ms for b, ms in row.items()} for name, row in medians.items()}
    return {"ckpt_path": str(ckpt_path), "image_size": size, "threads": threads, "rounds": rounds,
            "ms": medians, "speed_up_vs_torch": ratios, "machine": machine()}  # fmt: skip


def table(result: dict) -> str:
    batches = sorted(next(iter(result["ms"].values())))
    head = "| backend | " + " | ".join(f"batch {b}: ms (× torch)" for b in batches) + " |"
    lines = [head, "|---" * (len(batches) + 1) + "|"]
    for name, row in result["ms"].items():
        cells = [f"{row[b]:.1f} ({result['speed_up_vs_torch'][name][b]:.2f}×)" for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, default=BUNDLE_ROOT / "models" / "pretrained.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.ckpt_path, args.threads, args.batches, args.rounds)
    print(f"{args.ckpt_path} at {result['image_size']}², {args.threads} threads, median of {args.rounds} interleaved calls")
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
