"""Benchmark PerceptGuide's execution paths against its official-equivalent reference and MONAI peers.

One invocation measures every (path, workload) pair, each in a fresh subprocess so that its peak
RSS is its own, and prints one table with the ratios to the reference path (issue 9):

- paths: ``official`` (the official PerceptGuide network code itself, run from a checkout or git
  directory given by ``--official-repo``, with the same weights; see ``official_network.py``;
  with it the table also gives the ratios to ``official``), ``official-bf16`` (the same under
  the bf16 autocast of the ``bf16`` path, its baseline),
  ``reference`` (``attention_impl="reference"``, the official order of operations),
  ``fast`` (fp32), ``bf16`` (``fast`` under ``torch.autocast(bfloat16)`` as ``PromptInferer``
  applies it; only where the CPU has native bf16, or with ``--force-bf16``), ``compiled`` (``torch.compile`` of ``fast``, with ``--compile``),
  ``checkpoint`` (``fast`` with activation checkpointing, training only), and MONAI's
  ``SwinUNETR`` in 2D with feature size 24 and 48 as peers.
- workloads: inference at batch 1 and 8 (``torch.inference_mode``), one Adam training step at
  batch 8 (cross-entropy on both heads); the paper's size (224² images, embed 96, window 7) unless
  ``--image-size``, ``--embed-dim`` and ``--window-size`` say otherwise.

Reported per pair: median seconds per call over ``--repeats`` calls (after ``--warmup`` calls,
pooled over ``--rounds`` sweeps), images/s, peak RSS of the subprocess. No GPU is used.

Usage::

    python -m benchmarks.benchmark [--repeats 5] [--rounds 1] [--threads 2] [--compile] \\
        [--official-repo ../PerceptGuide] [--json results.json] [--plot docs/performance.png] \\
        [--image-size 224] [--embed-dim 96] [--window-size 7]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import BUNDLE_ROOT

TRAIN_DROP_PATH = 0.2  # the paper's training setting
PROMPT_NAMES = {"position": "breast", "task": "segmentation", "mode": "whole", "type": "tumor"}


@dataclass(frozen=True)
class NetworkSize:
    """Input side (pixels), first-stage width and attention window of every PerceptGuide path.

    The defaults are the paper's (66 M parameters). Inputs are padded to a multiple of
    ``4 · window_size · 8`` pixels, so a smaller image needs a smaller window to cost less.
    """

    image_size: int = 224
    embed_dim: int = 96
    window_size: int = 7

    def options(self, train: bool) -> dict:
        """PerceptGuide options shared by every path: this size, the paper's drop path when training."""
        return {
            "img_size": self.image_size,
            "embed_dim": self.embed_dim,
            "window_size": self.window_size,
            "drop_path_rate": TRAIN_DROP_PATH if train else 0.0,
        }

    def argv(self) -> list[str]:
        """This size as the command-line options of :func:`add_size_options`."""
        values = {"--image-size": self.image_size, "--embed-dim": self.embed_dim, "--window-size": self.window_size}
        return [item for option, value in values.items() for item in (option, str(value))]

    def __str__(self) -> str:
        return f"{self.image_size}², embed {self.embed_dim}, window {self.window_size}"


PAPER = NetworkSize()


@dataclass(frozen=True)
class Workload:
    """A timed call: ``batch`` images, inference or one training step."""

    batch: int
    train: bool


WORKLOADS = {
    "infer-b1": Workload(1, False),
    "infer-b8": Workload(8, False),
    "train-b8": Workload(8, True),
}


@dataclass(frozen=True)
class Variant:
    """A path (model variant): how to build it (training or not, size), which workloads it runs,
    whether it takes prompts."""

    build: Callable[[bool, NetworkSize], nn.Module]
    workloads: Sequence[str] = tuple(WORKLOADS)
    prompted: bool = True
    compiled: bool = False
    bf16: bool = False


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """``--image-size``, ``--embed-dim``, ``--window-size`` (the paper's by default), read by :func:`size_of`."""
    parser.add_argument("--image-size", type=int, default=PAPER.image_size, help="input side in pixels")
    parser.add_argument("--embed-dim", type=int, default=PAPER.embed_dim, help="first-stage width C")
    parser.add_argument("--window-size", type=int, default=PAPER.window_size, help="attention window side")


def size_of(args: argparse.Namespace) -> NetworkSize:
    """The network size given by the options of :func:`add_size_options`."""
    return NetworkSize(args.image_size, args.embed_dim, args.window_size)


def perceptguide(train: bool, size: NetworkSize = PAPER, **options) -> nn.Module:
    """The network of ``size`` with ``options``, seeded so every path has the same weights."""
    from bundle.networks import PerceptGuide

    torch.manual_seed(0)
    return PerceptGuide(**size.options(train), **options)


def official(repo: str, train: bool, size: NetworkSize = PAPER) -> nn.Module:
    """The official network code of ``repo`` holding the weights of :func:`perceptguide`.

    Our network is built only for its state dict, whose tensors the official model then takes
    over (no copy), so the worker's peak RSS is that of one model as on the other paths.
    """
    from benchmarks.official_network import build_official

    return build_official(repo, perceptguide(train, size).state_dict(), **size.options(train))


def swin_unetr(feature_size: int) -> nn.Module:
    """MONAI's SwinUNETR in 2D, 3 channels in, 2 classes out (the peer)."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=3, out_channels=2, feature_size=feature_size, spatial_dims=2)


OFFICIAL = "official"  # the path of --official-repo, not in PATHS: it needs the official code
OFFICIAL_BF16 = "official-bf16"  # the official code under the same bf16 autocast as the bf16 path
PATHS = {
    "reference": Variant(lambda train, size: perceptguide(train, size, attention_impl="reference")),
    "fast": Variant(perceptguide),
    "bf16": Variant(perceptguide, bf16=True),
    "compiled": Variant(perceptguide, compiled=True),
    "checkpoint": Variant(lambda train, size: perceptguide(train, size, use_checkpoint=True), workloads=("train-b8",)),
    "SwinUNETR-24": Variant(lambda train, size: swin_unetr(24), prompted=False),
    "SwinUNETR-48": Variant(lambda train, size: swin_unetr(48), prompted=False),
}


def variants(official_repo: str | None) -> dict[str, Variant]:
    """:data:`PATHS`, led by the official path when its code is given."""
    if official_repo is None:
        return PATHS
    official_code = functools.partial(official, official_repo)
    return {OFFICIAL: Variant(official_code), OFFICIAL_BF16: Variant(official_code, bf16=True), **PATHS}


@dataclass
class Measurement:
    """Times (s per call) and peak RSS (MB) of one path on one workload."""

    path: str
    workload: str
    times: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def images_per_s(self) -> float:
        return WORKLOADS[self.workload].batch / self.median


def inputs(batch: int, prompted: bool, size: NetworkSize = PAPER) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    """Seeded forward arguments (images of ``size``), seg labels (B, H, W) and cls labels (B,)."""
    from bundle.prompts import DEFAULT_VOCABULARY

    side = size.image_size
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, side, side, generator=generator)
    seg_label = torch.randint(0, 2, (batch, side, side), generator=generator)
    cls_label = torch.randint(0, 2, (batch,), generator=generator)
    if not prompted:
        return (image,), seg_label, cls_label
    prompts = {key: value.expand(batch, -1) for key, value in DEFAULT_VOCABULARY.encode(PROMPT_NAMES).items()}
    return (image, prompts), seg_label, cls_label


def loss_of(outputs: torch.Tensor | Sequence[torch.Tensor], seg_label: torch.Tensor, cls_label: torch.Tensor):
    """Cross-entropy of the seg logits, plus of the cls logits for two-headed networks."""
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, seg_label)
    seg_logits, cls_logits = outputs
    return F.cross_entropy(seg_logits, seg_label) + F.cross_entropy(cls_logits, cls_label)


def time_calls(step: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(
    model: nn.Module,
    workload: Workload,
    prompted: bool,
    repeats: int,
    warmup: int,
    compile_model: bool = False,
    bf16: bool = False,
    size: NetworkSize = PAPER,
) -> list[float]:
    """Seconds per call of ``model`` on ``workload`` (images of ``size``): inference under
    inference_mode, or an Adam step.

    ``bf16`` runs the forward (and loss) under CPU bf16 autocast; backward and the fp32 master
    weights stay outside it, as PyTorch's AMP recipe has it.
    """
    from benchmarks.compilation import compile_or_eager

    args, seg_label, cls_label = inputs(workload.batch, prompted, size)
    model.train(workload.train)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    if not workload.train:
        with torch.inference_mode(), autocast():
            run = compile_or_eager(model, *args) if compile_model else model
            return time_calls(lambda: run(*args), repeats, warmup)

    with autocast():
        run = compile_or_eager(model, *args) if compile_model else model
    step = adam_step(model, run, bf16)
    return time_calls(lambda: step(args, seg_label, cls_label), repeats, warmup)


def adam_step(
    model: nn.Module, run: Callable | None = None, bf16: bool = False
) -> Callable[[tuple, torch.Tensor, torch.Tensor], None]:
    """One Adam step of ``model`` on (forward arguments, seg labels, cls labels), per call.

    ``run`` is the forward to use (e.g. ``model`` compiled), ``model`` itself by default. ``bf16``
    runs the forward and the loss under CPU bf16 autocast; backward and the fp32 master weights
    stay outside it, as PyTorch's AMP recipe has it.
    """
    forward = model if run is None else run
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(args: tuple, seg_label: torch.Tensor, cls_label: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(forward(*args), seg_label, cls_label)
        loss.backward()
        optimizer.step()

    return step


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(
    path: str,
    workload: str,
    repeats: int,
    warmup: int,
    threads: int,
    official_repo: str | None = None,
    size: NetworkSize = PAPER,
) -> None:
    """Measure one pair in this (fresh) process and print it as one JSON line."""
    torch.set_num_threads(threads)
    spec = variants(official_repo)[path]
    model = spec.build(WORKLOADS[workload].train, size)
    times = measure(model, WORKLOADS[workload], spec.prompted, repeats, warmup, spec.compiled, spec.bf16, size)
    print(json.dumps({"times": times, "peak_rss_mb": peak_rss_mb()}))


def run_worker(path: str, workload: str, args: argparse.Namespace) -> Measurement:
    """Run :func:`worker` in a subprocess; a failure becomes a note in the table."""
    command = [sys.executable, "-m", "benchmarks.benchmark", "--worker", path, workload]
    command += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    command += size_of(args).argv()
    if args.official_repo:
        command += ["--official-repo", args.official_repo]
    result = subprocess.run(
        command, cwd=BUNDLE_ROOT, capture_output=True, text=True, env=os.environ | worker_env(args)
    )
    measurement = Measurement(path, workload)
    if result.returncode != 0:
        measurement.note = f"failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}"
        return measurement
    record = json.loads(result.stdout.strip().splitlines()[-1])
    measurement.times, measurement.peak_rss_mb = record["times"], record["peak_rss_mb"]
    return measurement


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    """Thread limits for every library, optional huge pages and passive OpenMP waiting."""
    env = {name: str(args.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if args.thp:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    if args.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def selected_paths(args: argparse.Namespace) -> dict[str, str]:
    """Paths to run, and a reason for each path left out."""
    from bundle.workflows.inferers import cpu_supports_bf16

    skipped = {}
    if not (cpu_supports_bf16() or args.force_bf16):
        for path in ("bf16", OFFICIAL_BF16):
            skipped[path] = "skipped: this CPU lacks native bf16 (avx512_bf16 / amx_bf16); --force-bf16 runs it"
    if not args.compile:
        skipped["compiled"] = "skipped: --compile runs it (compilation takes minutes)"
    return {path: skipped.get(path, "") for path in args.paths}


def machine() -> dict[str, str]:
    """CPU model, its vector/bf16 flags, torch version and load, for the record."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    fields = dict(line.split(":", 1) for line in cpuinfo if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = sorted(flag for flag in fields.get("flags", "").split() if flag.startswith(("avx", "amx", "fma")))
    return {
        "cpu": f"{fields.get('model name', platform.processor())} ({os.cpu_count()} logical CPUs)",
        "flags": " ".join(flags),
        "torch": f"{torch.__version__} (capability {torch.backends.cpu.get_cpu_capability()})",
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
    }


def report(title: str, markdown: str, result: dict, json_path: Path | None) -> dict:
    """Print a benchmark's title and table, write its ``result`` to ``json_path`` when given; returns ``result``."""
    print(title)
    print(markdown)
    if json_path:
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(measurements: list[Measurement], notes: dict[str, str]) -> str:
    """Markdown table: one row per (path, workload), ratios to the reference on the same workload.

    When the official path was measured, two more columns give the ratios to it (the reference
    path already shares this bundle's other optimisations; the official code shares none).
    """
    baselines = ["reference"] + ([OFFICIAL] if any(m.path == OFFICIAL and m.times for m in measurements) else [])
    base_of = {(m.path, m.workload): m for m in measurements if m.path in baselines and m.times}
    ratio_columns = [f"{what} vs {base}" for base in baselines for what in ("speed", "RSS")]
    empty = " |" * len(ratio_columns)
    lines = [
        "| path | workload | median s | images/s | peak RSS MB | " + " | ".join(ratio_columns) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(ratio_columns),
    ]
    for m in measurements:
        if not m.times:
            lines.append(f"| {m.path} | {m.workload} | {m.note} | | |{empty}")
            continue
        ratios = []
        for base in (base_of.get((name, m.workload)) for name in baselines):
            if base is None:
                ratios += ["", ""]
                continue
            ratios += [f"{base.median / m.median:.2f}×", f"{m.peak_rss_mb / base.peak_rss_mb:.2f}×"]
        lines.append(
            f"| {m.path} | {m.workload} | {m.median:.3f} | {m.images_per_s:.2f} | {m.peak_rss_mb:.0f} | "
            + " | ".join(ratios)
            + " |"
        )
    for path, note in notes.items():
        if note:
            lines.append(f"| {path} | all | {note} | | |{empty}")
    return "\n".join(lines)


def plot(measurements: list[Measurement], path: Path, title: str) -> None:
    """Grouped bar chart of images/s per path, one group per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [m for m in measurements if m.times]
    workloads = [w for w in WORKLOADS if any(m.workload == w for m in measured)]
    paths = list(dict.fromkeys(m.path for m in measured))
    width = 0.8 / len(paths)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for i, name in enumerate(paths):
        rates = {m.workload: m.images_per_s for m in measured if m.path == name}
        xs = [j + i * width for j, w in enumerate(workloads) if w in rates]
        bars = axes.bar(xs, [rates[w] for w in workloads if w in rates], width, label=name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(workloads))], workloads)
    axes.set_ylabel("images / s (higher is better)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=[OFFICIAL, OFFICIAL_BF16, *PATHS],
        help="default: all (the official ones only with --official-repo)",
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per pair and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--rounds", type=int, default=1, help="sweeps over all pairs, pooled (evens out load)")
    parser.add_argument("--threads", type=int, default=2)
    add_size_options(parser)
    parser.add_argument("--compile", action="store_true", help="also run the torch.compile path")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 even without native CPU support")
    parser.add_argument("--thp", action="store_true", help="THP_MEM_ALLOC_ENABLE=1 in every worker")
    parser.add_argument(
        "--omp-passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE in every worker (robust on a busy machine)"
    )
    parser.add_argument(
        "--official-repo",
        metavar="PATH",
        help="a PerceptGuide checkout or git directory (e.g. a mirror): adds the official path, its code run "
        "with stand-ins for timm and the dataset module (einops: the real one if installed, `pip install einops`)",
    )
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart of images/s here (needs matplotlib)")
    parser.add_argument("--worker", nargs=2, metavar=("PATH", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.paths is None:
        args.paths = list(variants(args.official_repo))
    for path in (OFFICIAL, OFFICIAL_BF16):
        if path in args.paths and not args.official_repo:
            parser.error(f"path '{path}' needs --official-repo (a PerceptGuide checkout or git directory)")
    if args.official_repo:
        args.official_repo = str(Path(args.official_repo).expanduser().resolve())  # workers and records alike
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker, args.repeats, args.warmup, args.threads, args.official_repo, size_of(args))
        return
    info = machine()
    info["environment"] = " ".join(f"{key}={value}" for key, value in worker_env(args).items())
    if args.official_repo:
        from benchmarks.official_network import load_official

        # here rather than in every worker first: a wrong path or vocabulary stops the run at once
        try:
            code = load_official(args.official_repo)
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f"error: {err}")
        info["official"] = f"{code.source}, {code.einops}"
    for key, value in info.items():
        print(f"{key}: {value}")
    notes = selected_paths(args)
    # workload-major: the paths compared on one workload run back to back, under the same load
    specs = variants(args.official_repo)
    pairs = [(p, w) for w in args.workloads for p in notes if not notes[p] and w in specs[p].workloads]
    pooled = {pair: Measurement(*pair) for pair in pairs}
    for round_index in range(args.rounds):
        for pair in pairs:
            result = run_worker(*pair, args)
            print(f"round {round_index + 1}: {pair[0]:13s} {pair[1]} {result.note or f'{statistics.median(result.times):.3f} s'}", flush=True)
            pooled[pair].times += result.times
            pooled[pair].peak_rss_mb = max(pooled[pair].peak_rss_mb, result.peak_rss_mb)
            pooled[pair].note = pooled[pair].note or result.note
    info["load after"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    measurements = list(pooled.values())
    print(f"\n{args.threads} threads, {size_of(args)}, median of {args.repeats}×{args.rounds} calls")
    print(table(measurements, notes))
    print(f"load average before: {info['load']}, after: {info['load after']}")
    if args.json:
        records = [{"path": m.path, "workload": m.workload, "times": m.times, "peak_rss_mb": m.peak_rss_mb, "note": m.note} for m in measurements]
        args.json.write_text(json.dumps({"machine": info, "threads": args.threads, "results": records}, indent=1))
    if args.plot:
        plot(measurements, args.plot, f"PerceptGuide {size_of(args)}, {args.threads} threads — {info['cpu']}")


if __name__ == "__main__":
    main()
