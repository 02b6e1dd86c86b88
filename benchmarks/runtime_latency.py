"""Latency of checkpoints' networks per backend: eager PyTorch, ONNX Runtime, ONNX Runtime int8.

One process, one thread count, every (checkpoint, backend) pair's calls interleaved round by round
(so a slower or busier stretch of the machine hits all alike); the median of ``--rounds`` calls per
pair and batch size, at each checkpoint's input size, on random images with one prompt. The ONNX
Runtime graph is exported at batch 1 (``bundle.workflows.runtimes``): its batch of B is B calls.
Ratios are against eager PyTorch of the same checkpoint, and against the first checkpoint on the
same backend (e.g. a teacher and its student), all of the same run.

Usage::

    python -m benchmarks.runtime_latency [--ckpt_path models/pretrained.pt [models/student.pt ...]] \\
        [--threads 2] [--batches 1 8] [--rounds 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine, report
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


def measure(ckpt_paths: Sequence[Path], threads: int, batches: Sequence[int], rounds: int) -> dict:
    """``"<checkpoint stem> <backend>"`` -> batch -> median milliseconds per call, and the ratios."""
    if len({path.stem for path in ckpt_paths}) < len(ckpt_paths):
        raise ValueError(f"the checkpoints name their rows by file stem, which must differ: {[str(p) for p in ckpt_paths]}")
    torch.set_num_threads(threads)
    runners, images, vocabularies = {}, {}, {}
    for path in ckpt_paths:
        checkpoint = read_checkpoint(path)
        network = checkpoint.build()
        size = checkpoint.description.image_size
        images[path.stem] = size
        vocabularies[path.stem] = checkpoint.description.prompt_vocabulary
        for name, (backend, quantize) in BACKENDS.items():
            runners[f"{path.stem} {name}"] = (path.stem, runtime_network(network, backend, path, size, threads, quantize))
    medians: dict[str, dict[int, float]] = {name: {} for name in runners}
    with torch.inference_mode():
        for batch in batches:
            inputs = {
                stem: (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), prompts_for(vocabularies[stem], batch))
                for stem, size in images.items()
            }
            for stem, runner in runners.values():  # warm-up: first calls allocate and pick kernels
                runner(*inputs[stem])
            samples: dict[str, list[float]] = {name: [] for name in runners}
            for _ in range(rounds):
                for name, (stem, runner) in runners.items():
                    samples[name].append(time_call(lambda: runner(*inputs[stem])))
            for name in runners:
                medians[name][batch] = 1000 * statistics.median(samples[name])
    first = ckpt_paths[0].stem
    vs_torch = {name: {b: medians[f"{stem} torch"][b] / ms for b, ms in medians[name].items()} for name, (stem, _) in runners.items()}
    vs_first = {
        name: {b: medians[name.replace(stem, first, 1)][b] / ms for b, ms in medians[name].items()}
        for name, (stem, _) in runners.items()
    }
    return {"ckpt_paths": [str(path) for path in ckpt_paths], "image_sizes": images, "threads": threads, "rounds": rounds,
            "ms": medians, "speed_up_vs_torch": vs_torch, "speed_up_vs_first": vs_first, "machine": machine()}  # fmt: skip


def table(result: dict) -> str:
    batches = sorted(next(iter(result["ms"].values())))
    head = "| network, backend | " + " | ".join(f"batch {b}: ms (× torch, × first)" for b in batches) + " |"
    lines = [head, "|---" * (len(batches) + 1) + "|"]
    for name, row in result["ms"].items():
        cells = [f"{row[b]:.1f} ({result['speed_up_vs_torch'][name][b]:.2f}×, {result['speed_up_vs_first'][name][b]:.2f}×)" for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, nargs="+", default=[BUNDLE_ROOT / "models" / "pretrained.pt"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.ckpt_path, args.threads, args.batches, args.rounds)
    title = f"{', '.join(map(str, args.ckpt_path))}: {args.threads} threads, median of {args.rounds} interleaved calls"
    return report(title, table(result), result, args.json)


if __name__ == "__main__":
    main()
