"""How fast PerceptGuide's fast path could get at best: the time of the kernels it cannot avoid.

Whatever the code around them, a forward (or training step) has to run its matrix multiplies
and the window attention itself. This script times the baseline (the official code with
``--official-repo``, else the reference path) and the fast path in one process, calls
interleaved, then profiles one call of the fast path and adds up the wall time of those
kernels (the "floor"):

- GEMM: ``mkldnn::_linear_pointwise`` (the oneDNN linear layers), ``aten::addmm``, ``aten::mm``,
  ``aten::bmm``, ``aten::baddbmm`` (what ``F.linear`` and ``@`` run, forward and backward);
- attention: the CPU kernel of ``scaled_dot_product_attention``.

``baseline / floor`` is then the largest speed-up over the baseline any code around these
kernels could reach, were every other operator (LayerNorm, GELU, softmax of the prompted
blocks, residual adds, token gathers, casts) free. A goal above it needs faster kernels, not
different code around them. The profiler's overhead lands on the many small operators, not on
these large kernels, so the floor is not inflated by it.

Usage::

    python -m benchmarks.kernel_floor [--official-repo ../PerceptGuide] [--batches 1 8] [--bf16] \\
        [--train] [--repeats 5] [--threads 2] [--image-size 224] [--embed-dim 96] [--window-size 7]
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.benchmark import inputs
from benchmarks.benchmark_network import (
    FAST,
    Setup,
    arguments,
    baseline_path,
    callers,
    interleaved,
    setup_of,
    title,
    training_steps,
)

GEMM_KERNELS = frozenset(
    {"mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"}
)
# the fast path's unprompted blocks; in training (and in the prompted blocks) attention is
# explicit, and its matmuls count as GEMMs
ATTENTION_KERNELS = frozenset({"aten::_scaled_dot_product_flash_attention_for_cpu"})


@dataclass(frozen=True)
class Floor:
    """Seconds of one fast-path call: measured medians and the unavoidable kernels' share."""

    baseline: float
    fast: float
    gemm: float
    attention: float

    @property
    def floor(self) -> float:
        return self.gemm + self.attention

    @property
    def speedup(self) -> float:
        """Fast path against the baseline."""
        return self.baseline / self.fast

    @property
    def ceiling(self) -> float:
        """The largest speed-up over the baseline with every other operator free."""
        return self.baseline / self.floor


def kernel_seconds(run: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds of the GEMM and the attention kernels in one call of ``run`` (profiled)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    gemm = attention = 0.0
    for event in prof.key_averages():
        if event.key in GEMM_KERNELS:
            gemm += event.self_cpu_time_total
        elif event.key in ATTENTION_KERNELS:
            attention += event.self_cpu_time_total
    return gemm / 1e6, attention / 1e6


def calls(batch: int, setup: Setup) -> dict[str, Callable[[], object]]:
    """``{"baseline": ..., "fast": ...}``: one forward (or Adam step) each, same weights and inputs."""
    args, seg_label, cls_label = inputs(batch, True, setup.size)
    names = {"baseline": baseline_path(setup.official_repo), "fast": FAST}
    if setup.train:
        steps = training_steps(setup.official_repo, setup.bf16, setup.size)
        return {key: functools.partial(steps[name], args, seg_label, cls_label) for key, name in names.items()}
    forwards = callers(setup.official_repo, setup.size)

    def forward(call: Callable[[tuple], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.bf16):
                return call(args)

        return run

    return {key: forward(forwards[name]) for key, name in names.items()}


def measure(batch: int, repeats: int, warmup: int, setup: Setup = Setup()) -> Floor:
    """Median seconds of the baseline and the fast path (interleaved), and the fast path's floor."""
    runs = calls(batch, setup)
    times = interleaved(runs, repeats, warmup)
    gemm, attention = kernel_seconds(runs["fast"])
    return Floor(statistics.median(times["baseline"]), statistics.median(times["fast"]), gemm, attention)


def main(argv: Sequence[str] | None = None) -> dict[int, Floor]:
    args = arguments(__doc__).parse_args(argv)
    torch.set_num_threads(args.threads)
    baseline = baseline_path(args.official_repo)
    print(title(args))
    print(f"| batch | {baseline} s | fast s | GEMM s | attention s | floor s | fast vs {baseline} | ceiling vs {baseline} |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    floors = {}
    for batch in args.batches:
        result = measure(batch, args.repeats, args.warmup, setup_of(args))
        floors[batch] = result
        print(
            f"| {batch} | {result.baseline:.3f} | {result.fast:.3f} | {result.gemm:.3f} | {result.attention:.3f} "
            f"| {result.floor:.3f} | {result.speedup:.2f}× | {result.ceiling:.2f}× |"
        )
    return floors


if __name__ == "__main__":
    main()
