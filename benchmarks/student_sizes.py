"""Batch-1 latency of candidate distillation students against their teacher, per backend.

A student keeps the teacher's stage layout (configs/distill.yaml aligns their stages), so the
candidates differ from the teacher in width, depths, heads, window, the convolutional skip path
and input size; the four-stage list also times three layouts of 8-pixel tokens, the shape the
0.6.0 teacher took (``--layout three-stage``, the default for a three-stage teacher: candidates for
such a teacher). Each candidate is the teacher's constructor arguments with its overrides, random
weights (latency does not depend on them), timed in one process with the teacher: eager PyTorch
and ONNX Runtime, backend by backend with the candidates' calls interleaved round by round, the
median of ``--rounds`` calls at batch 1 on the candidate's own input size (``img_size``).

Usage::

    python -m benchmarks.student_sizes [--teacher models/pretrained.pt] [--threads 2] [--rounds 30] \\
        [--layout four-stage|three-stage] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine, report
from benchmarks.runtime_latency import prompts_for, time_call
from bundle.networks import read_checkpoint, save_checkpoint
from bundle.networks.perceptguide import PerceptGuide
from bundle.workflows.runtimes import runtime_network

# candidate -> overrides of the teacher's constructor arguments ("teacher": none)
CANDIDATES: dict[str, dict] = {
    "teacher": {},
    "w16 d1 cs8": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                   "num_heads": [2, 4, 8, 16], "conv_skips": 8},
    "w16 d2/1 cs8": {"embed_dim": 16, "encoder_depths": [2, 2, 2, 2], "decoder_depths": [1, 1, 1, 1],
                     "num_heads": [2, 4, 8, 16], "conv_skips": 8},
    "w24 d1 cs8": {"encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1], "conv_skips": 8},
    "w16 d1 cs4": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                   "num_heads": [2, 4, 8, 16], "conv_skips": 4},
    "w16 d1 cs8 win2": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                        "num_heads": [2, 4, 8, 16], "conv_skips": 8, "window_size": 2},
    "w16 d1 no conv skips": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                             "num_heads": [2, 4, 8, 16], "conv_skips": 0},
    "w16 d1 cs8 96²": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                        "num_heads": [2, 4, 8, 16], "conv_skips": 8, "img_size": 96, "window_size": 3},
    "w16 d1 cs8 64²": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                        "num_heads": [2, 4, 8, 16], "conv_skips": 8, "img_size": 64, "window_size": 2},
    "w24 d1 cs8 96²": {"encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1], "conv_skips": 8,
                        "img_size": 96, "window_size": 3},
    # 8-pixel tokens (a quarter as many) with the convolutional path carrying three finer scales;
    # three stages keep window 4 unpadded at 128² (pad multiple 8 * 4 * 2^2)
    "w16 d1 cs8 patch 8, 3 stages": {"embed_dim": 16, "encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                                     "num_heads": [2, 4, 8], "conv_skips": 8, "patch_size": 8},
    "w24 d1 cs8 patch 8, 3 stages": {"encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                                     "num_heads": [3, 6, 12], "conv_skips": 8, "patch_size": 8},
    "w16 d1 cs8 patch 8, win2": {"embed_dim": 16, "encoder_depths": [1, 1, 1, 1], "decoder_depths": [1, 1, 1, 1],
                                 "num_heads": [2, 4, 8, 16], "conv_skips": 8, "patch_size": 8, "window_size": 2},
}  # fmt: skip
# students of a teacher with the 0.6.0 layout (8-pixel tokens, three stages, 96², conv skips 32)
THREE_STAGE_CANDIDATES: dict[str, dict] = {
    "teacher": {},
    "w16 d1 cs8": {"embed_dim": 16, "encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                   "num_heads": [2, 4, 8], "conv_skips": 8},
    "w16 d1 cs6": {"embed_dim": 16, "encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                   "num_heads": [2, 4, 8], "conv_skips": 6},
    "w16 d1 cs4": {"embed_dim": 16, "encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                   "num_heads": [2, 4, 8], "conv_skips": 4},
    "w16 d1 cs16": {"embed_dim": 16, "encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                    "num_heads": [2, 4, 8], "conv_skips": 16},
    "w24 d1 cs8": {"encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1], "conv_skips": 8},
    "w24 d2/1 cs8": {"conv_skips": 8},
    "w16 d1 cs8 64²": {"embed_dim": 16, "encoder_depths": [1, 1, 1], "decoder_depths": [1, 1, 1],
                       "num_heads": [2, 4, 8], "conv_skips": 8, "img_size": 64, "window_size": 2},
}  # fmt: skip
LAYOUTS = {"four-stage": CANDIDATES, "three-stage": THREE_STAGE_CANDIDATES}
BACKENDS = ("torch", "onnxruntime")


def candidate_checkpoints(teacher: Path, candidates: Mapping[str, dict], folder: Path) -> dict[str, Path]:
    """One checkpoint per candidate in ``folder``: the teacher's description with the candidate's arguments."""
    checkpoint = read_checkpoint(teacher)
    paths = {}
    for name, overrides in candidates.items():
        if not overrides:
            paths[name] = teacher
            continue
        torch.manual_seed(0)
        arguments = {**checkpoint.description.arguments, **overrides}
        network = PerceptGuide(**arguments)
        description = dataclasses.replace(checkpoint.description, arguments=network.arguments, image_size=network.img_size)
        paths[name] = save_checkpoint(folder / f"{name.replace(' ', '_').replace('/', '-')}.pt", network, description)
    return paths


def measure(teacher: Path, threads: int, rounds: int, candidates: Mapping[str, dict] = CANDIDATES) -> dict:
    """candidate -> {parameters, backend: median ms at batch 1, backend + ' speed-up': teacher ms / ms}."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        paths = candidate_checkpoints(teacher, candidates, Path(folder))
        runners, parameters, images = {}, {}, {}
        for name, path in paths.items():
            checkpoint = read_checkpoint(path)
            network = checkpoint.build()
            parameters[name] = sum(p.numel() for p in network.parameters())
            size = checkpoint.description.image_size
            images[name] = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            for backend in BACKENDS:
                runners[name, backend] = runtime_network(network, backend, path, size, threads)
        prompts = prompts_for(read_checkpoint(teacher).description.prompt_vocabulary, 1)
        samples: dict[tuple, list[float]] = {key: [] for key in runners}
        with torch.inference_mode():
            for (name, _), runner in runners.items():  # warm-up: first calls allocate and pick kernels
                runner(images[name], prompts)
            for backend in BACKENDS:  # backend by backend: PyTorch's threads spin after an eager call, slowing the next
                for _ in range(rounds):
                    for name in paths:
                        runner = runners[name, backend]
                        samples[name, backend].append(time_call(lambda: runner(images[name], prompts)))
    ms = {key: 1000 * statistics.median(values) for key, values in samples.items()}
    rows = {}
    for name in paths:
        row: dict = {"parameters": parameters[name], "image_size": images[name].shape[-1]}
        for backend in BACKENDS:
            row[backend] = ms[name, backend]
            row[f"{backend} speed-up"] = ms["teacher", backend] / ms[name, backend]
        rows[name] = row
    return {"teacher": str(teacher), "threads": threads, "rounds": rounds, "candidates": rows,
            "overrides": dict(candidates), "machine": machine()}  # fmt: skip


def table(result: dict) -> str:
    lines = ["| candidate | input | parameters | " + " | ".join(f"{b} ms (teacher / it)" for b in BACKENDS) + " |"]
    lines.append("|---" * (3 + len(BACKENDS)) + "|")
    for name, row in result["candidates"].items():
        cells = [f"{row[b]:.1f} ({row[f'{b} speed-up']:.2f}×)" for b in BACKENDS]
        lines.append(f"| {name} | {row['image_size']}² | {row['parameters'] / 1e6:.2f} M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", type=Path, default=BUNDLE_ROOT / "models" / "pretrained.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--layout", choices=sorted(LAYOUTS),
                        help="candidates for a teacher of four stages (0.3.0) or three (0.6.0); default: the teacher's")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    stages = len(read_checkpoint(args.teacher).description.arguments["encoder_depths"])
    layout = args.layout or ("three-stage" if stages == 3 else "four-stage")
    result = measure(args.teacher, args.threads, args.rounds, LAYOUTS[layout])
    title = f"students of {args.teacher}, batch 1, {args.threads} threads, median of {args.rounds}"
    return report(title, table(result), result, args.json)


if __name__ == "__main__":
    main()
