"""Forward latency of PerceptGuide's fast path against the explicit q·W·kᵀ reference path (issue 4).

Both networks hold the same weights (embed 96, 224² input); calls alternate between them so
that a change in machine load hits both alike. Prints the median seconds per forward at each
batch size and the speed-up (reference / fast). ``scripts/benchmark.py`` is the full table with
bf16, peers, training and memory.

Usage::

    python scripts/benchmark_network.py [--batches 1 8] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from benchmark import inputs, perceptguide, time_calls

IMPLS = ("reference", "fast")


def latencies(batch: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per inference forward of each path at ``batch``, calls interleaved."""
    nets = {impl: perceptguide(train=False, attention_impl=impl).eval() for impl in IMPLS}
    nets["fast"].load_state_dict(nets["reference"].state_dict())
    args, _, _ = inputs(batch, prompted=True)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    with torch.inference_mode():
        for impl in IMPLS:
            time_calls(lambda: nets[impl](*args), 0, warmup)
        for _ in range(repeats):
            for impl in IMPLS:
                times[impl] += time_calls(lambda: nets[impl](*args), 1, 0)
    return times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"PerceptGuide forward, 224², embed 96, {args.threads} threads, median of {args.repeats}")
    print("| batch | reference q·W·kᵀ s | fast rank-1 s | speed-up |")
    print("|---:|---:|---:|---:|")
    for batch in args.batches:
        medians = {impl: statistics.median(t) for impl, t in latencies(batch, args.repeats, args.warmup).items()}
        print(f"| {batch} | {medians['reference']:.3f} | {medians['fast']:.3f} | {medians['reference'] / medians['fast']:.2f}× |")


if __name__ == "__main__":
    main()
