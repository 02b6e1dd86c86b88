"""Inference latency (or training-step time) of PerceptGuide's fast path against its reference, in one process.

Every path holds the same weights (the paper's size, 224² input and embed 96, unless
``--image-size``, ``--embed-dim`` and ``--window-size`` say otherwise) and the calls alternate
between the paths, so that a change in machine load hits all alike; the separate subprocesses of
``python -m benchmarks.benchmark`` (the full table with bf16, peers, training and memory) are
noisier for ratios of a few per cent. Paths:

- ``official``: the official network code (with ``--official-repo``, as in ``benchmark.py``);
- ``reference``: ``attention_impl="reference"``, the official order of operations;
- ``fast, one block``: the fast path with every map in one piece and MKL linear layers
  (``PerceptGuide(cache_block_bytes=2**62, onednn_linear=False)``);
- ``fast, MKL linear``: MLPs and seg head over cache-sized token blocks, linear layers by
  ``F.linear`` (``onednn_linear=False``);
- ``fast``: the same with oneDNN's linear layers and fused GELU (``bundle.networks.dense``).

With ``--bf16`` every path runs under CPU bf16 autocast, as ``PromptInferer`` applies it (the
fast path's oneDNN option then has nothing to do: autocast takes ``F.linear``). With ``--train``
it times one Adam step instead (cross-entropy on both heads, the paper's drop
path 0.2, as ``benchmark.py``'s ``train-b8``) of the official, reference and fast paths; the fast
path's inference switches do not apply there.

Usage::

    python -m benchmarks.benchmark_network [--batches 1 8] [--repeats 5] [--threads 2] \\
        [--official-repo ../PerceptGuide] [--train] [--bf16] [--image-size 224] [--embed-dim 96] [--window-size 7]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from benchmarks.benchmark import (
    PAPER,
    NetworkSize,
    adam_step,
    add_size_options,
    inputs,
    official,
    perceptguide,
    size_of,
    time_calls,
)

REFERENCE = "reference"
ONE_BLOCK = "fast, one block"
MKL_LINEAR = "fast, MKL linear"
FAST = "fast"


@dataclass(frozen=True)
class Setup:
    """What is timed: every path (the official code of ``official_repo`` too, when given) at
    ``size``, one inference forward or one Adam step (``train``), in fp32 or under CPU bf16
    autocast (``bf16``: forward and loss only in training, fp32 master weights)."""

    official_repo: str | None = None
    train: bool = False
    bf16: bool = False
    size: NetworkSize = PAPER


def setup_of(args: argparse.Namespace) -> Setup:
    """The setup given on the command line of :func:`arguments`."""
    return Setup(args.official_repo, args.train, args.bf16, size_of(args))


# the speed options of the fast path's variants; every variant holds the same (seeded) weights
FAST_VARIANTS = {
    ONE_BLOCK: {"cache_block_bytes": 2**62, "onednn_linear": False},
    MKL_LINEAR: {"onednn_linear": False},
    FAST: {},
}


def callers(official_repo: str | None, size: NetworkSize = PAPER) -> dict[str, Callable[[tuple], object]]:
    """Path name -> a function that runs that path's network (of ``size``) on the forward arguments."""
    nets = {"official": official(official_repo, False, size)} if official_repo else {}
    nets[REFERENCE] = perceptguide(False, size, attention_impl="reference")
    nets.update({name: perceptguide(False, size, **options) for name, options in FAST_VARIANTS.items()})
    return {name: (lambda args, net=net.eval(): net(*args)) for name, net in nets.items()}


def training_steps(
    official_repo: str | None, bf16: bool = False, size: NetworkSize = PAPER
) -> dict[str, Callable[[tuple, torch.Tensor, torch.Tensor], None]]:
    """Path name -> one Adam step of that path's network (of ``size``, training mode) on arguments and labels.

    ``bf16``: forward and loss under CPU bf16 autocast, backward and update outside it (fp32
    master weights), as in ``benchmark.py``.
    """
    nets = {"official": official(official_repo, True, size)} if official_repo else {}
    nets[REFERENCE] = perceptguide(True, size, attention_impl="reference")
    nets[FAST] = perceptguide(True, size)
    return {name: adam_step(net.train(), bf16=bf16) for name, net in nets.items()}


def latencies(batch: int, repeats: int, warmup: int, setup: Setup = Setup()) -> dict[str, list[float]]:
    """Seconds per inference forward (or training step) of each path at ``batch``, calls interleaved."""
    args, seg_label, cls_label = inputs(batch, True, setup.size)
    if setup.train:
        steps = training_steps(setup.official_repo, setup.bf16, setup.size)
        paths = {name: (lambda step=step: step(args, seg_label, cls_label)) for name, step in steps.items()}
        mode = contextlib.nullcontext()
    else:
        forwards = callers(setup.official_repo, setup.size)
        paths = {name: (lambda call=call: call(args)) for name, call in forwards.items()}
        mode = torch.inference_mode()
    with mode, torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.bf16 and not setup.train):
        return interleaved(paths, repeats, warmup)


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each run: ``warmup`` untimed calls each, then ``repeats`` rounds in turn."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        time_calls(run, 0, warmup)
    for _ in range(repeats):
        for name, run in runs.items():
            times[name] += time_calls(run, 1, 0)
    return times


def baseline_path(official_repo: str | None) -> str:
    """The path the others are compared with: the official code when given, else the reference."""
    return "official" if official_repo else REFERENCE


def title(args: argparse.Namespace) -> str:
    """First output line: what is timed, at which precision and size, on how many threads."""
    what = "training step (Adam, drop path 0.2)" if args.train else "inference forward"
    precision = "bf16 autocast" if args.bf16 else "fp32"
    return f"PerceptGuide {what}, {precision}, {size_of(args)}, {args.threads} threads, median of {args.repeats}"


def arguments(description: str) -> argparse.ArgumentParser:
    """Command line of the one-process benchmarks (this script and ``kernel_floor.py``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    add_size_options(parser)
    parser.add_argument("--official-repo", help="a PerceptGuide checkout or git directory: adds the official path")
    parser.add_argument("--train", action="store_true", help="time an Adam training step instead of inference")
    parser.add_argument("--bf16", action="store_true", help="every path under CPU bf16 autocast")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    print(title(args))
    baseline = baseline_path(args.official_repo)
    print(f"| batch | path | median s | speed vs {baseline} |")
    print("|---:|---|---:|---:|")
    for batch in args.batches:
        times = latencies(batch, args.repeats, args.warmup, setup_of(args))
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, median in medians.items():
            print(f"| {batch} | {name} | {median:.3f} | {medians[baseline] / median:.2f}× |")


if __name__ == "__main__":
    main()
