"""Latency of checkpoints' networks per backend: eager PyTorch (fp32, and bf16 autocast on a CPU with native bf16), ONNX Runtime, ONNX Runtime int8.

One process, one thread count; runtime by runtime (eager PyTorch, then ONNX Runtime), the calls of
every (checkpoint, backend) pair of that runtime interleaved round by round (so a slower or busier
stretch of the machine hits a teacher and its student alike; runtimes are not mixed within a round,
since PyTorch's OpenMP threads spin for a while after an eager call and slowed the ONNX Runtime
call after it); the median of ``--rounds`` calls per pair and batch size, at each checkpoint's input
size, on random images with one prompt. The ONNX Runtime graph's batch axis is dynamic and a batch
is one call; a single image runs in a session with that axis fixed at 1 (``bundle.workflows.runtimes``).
Ratios are against eager PyTorch of the same checkpoint, and against the first checkpoint on the
same backend (e.g. a teacher and its student), all of the same run. ``torch-bf16`` is eager PyTorch
under the bf16 autocast that ``configs/inference.yaml`` applies (``PromptInferer``); it is measured
only where the CPU has native bf16, as the bundle uses it only there.

``--processes N`` times each row alone instead: built and run in a fresh process that holds no other
row's sessions, thread pools or weights, ``--rounds`` consecutive calls per batch size (as a live
video calls one model), N such processes per row taking turns with the other rows'; a row's time is
the median of its least disturbed process (every process's median is in the JSON). On the 2-core
VMs here a core's speed switches between two levels for seconds at a time (the student's batch-1
call 1.45 or 1.95 ms in one process), so interleaved medians mix the two (docs/performance.md).

``--dynamic_batch`` adds a row per checkpoint: its ONNX Runtime graph in a single session whose batch
axis stays dynamic (the bundle's sessions fix it at batch 1, ``BatchSessions``), to measure what
fixing it buys.

``--references`` adds networks to compare with, at the first checkpoint's input size, random
weights (latency does not depend on them), eager PyTorch and ONNX Runtime (exported as the
bundle's graphs are, with a dynamic batch axis):

- ``official``: the official PerceptGuide code (``--official_repo``, see ``official_network.py``)
  with the first checkpoint's Swin sizes (width, depths, heads, window); the official network has
  no convolutional stem or skip path, so those are left out;
- ``SwinUNETR-24``: MONAI's SwinUNETR in 2D, feature size 24 (no prompts, no classification head).

Usage::

    python -m benchmarks.runtime_latency [--ckpt_path models/pretrained.pt [models/student.pt ...]] \\
        [--threads 2] [--batches 1 8] [--rounds 30] [--references official SwinUNETR-24] \\
        [--official_repo ../PerceptGuide] [--dynamic_batch] [--processes 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch
from monai.utils import optional_import
from torch import nn

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine, report, swin_unetr
from bundle.networks import BundleCheckpoint, PerceptGuide, read_checkpoint
from bundle.prompts import PROMPT_KEYS, PromptVocabulary
from bundle.workflows.inferers import PromptInferer, cpu_supports_bf16
from bundle.workflows.runtimes import BatchSessions, export_onnx, onnx_model_path, onnx_session, runtime_network

# row name -> (runtime_network's backend, its quantize, run under bf16 autocast)
BACKENDS = {
    "torch": ("torch", "none", False),
    "torch-bf16": ("torch", "none", True),
    "onnxruntime": ("onnxruntime", "none", False),
    "onnxruntime-int8": ("onnxruntime", "int8", False),
}
DYNAMIC = "onnxruntime-dynamic"  # --dynamic_batch: the bundle's graph in one session, its batch axis left dynamic
REFERENCES = ("official", "SwinUNETR-24")


class PositionalPrompts(nn.Module):
    """A reference network called with the prompts as positional tensors (the exporter's inputs);
    a network without prompts is given the image alone."""

    def __init__(self, network: nn.Module, prompted: bool) -> None:
        super().__init__()
        self.network, self.prompted = network, prompted

    def forward(self, image: torch.Tensor, *prompts: torch.Tensor):
        if self.prompted:
            return self.network(image, dict(zip(PROMPT_KEYS, prompts)))
        return self.network(image)


def check_references(names: Sequence[str], official_repo: str | None) -> None:
    """Raises ValueError for an unknown reference or an official one without ``official_repo``."""
    for name in names:
        if name not in REFERENCES:
            raise ValueError(f"unknown reference {name!r}; known: {', '.join(REFERENCES)}")
        if name == "official" and not official_repo:
            raise ValueError("the official reference needs --official_repo (a checkout or git directory of the official code)")


def reference_networks(names: Sequence[str], checkpoint: BundleCheckpoint, official_repo: str | None) -> dict[str, tuple[nn.Module, bool]]:
    """name -> (eager network at ``checkpoint``'s input size with random weights, whether it takes prompts)."""
    check_references(names, official_repo)
    networks = {}
    for name in names:
        torch.manual_seed(0)
        if name == "official":
            from benchmarks.official_network import build_official

            arguments = {**checkpoint.description.arguments, "conv_skips": 0, "patch_embed": "linear"}
            networks[name] = (build_official(official_repo, PerceptGuide(**arguments).state_dict(), **arguments), True)
        else:
            networks[name] = (swin_unetr(24), False)
    return networks


def reference_runners(
    name: str, network: nn.Module, prompted: bool, image_size: int, vocabulary: PromptVocabulary, threads: int, folder: Path
) -> dict[str, Callable[[torch.Tensor, Mapping[str, torch.Tensor]], object]]:
    """backend -> call ``(image, prompts)`` of the reference network ``name``: eager torch, and ONNX Runtime
    on its graph exported into ``folder`` with a dynamic batch axis (a batch is one call, as the bundle's graphs run)."""
    wrapped = PositionalPrompts(network.eval(), prompted)
    image = torch.zeros(2, 3, image_size, image_size)  # batch 2: a batch-1 trace could fold the batch into reshapes
    prompts = prompts_for(vocabulary, 2)
    example = (image, *(prompts[key] for key in PROMPT_KEYS)) if prompted else (image,)
    names = ["image", *PROMPT_KEYS] if prompted else ["image"]
    runners = {"torch": lambda image, prompts: wrapped(image, *(prompts[key] for key in PROMPT_KEYS))}
    if not optional_import("onnxruntime")[1]:
        return runners
    path = folder / f"{name}.onnx"
    with torch.no_grad():
        outputs = wrapped(*example)
        output_names = [f"output{index}" for index in range(len(outputs) if isinstance(outputs, tuple) else 1)]
        torch.onnx.export(
            wrapped, example, str(path), dynamo=False, input_names=names, output_names=output_names,
            dynamic_axes={axis_name: {0: "batch"} for axis_name in names + output_names},
        )  # fmt: skip
    # as the bundle's sessions: the batch axis fixed at batch 1, threads not spinning (they would slow the next runner's call)
    sessions = BatchSessions(path, threads)

    def run_session(image: torch.Tensor, prompts: Mapping[str, torch.Tensor]) -> None:
        feeds = {"image": image.numpy()}
        if prompted:
            feeds |= {key: prompts[key].numpy() for key in PROMPT_KEYS}
        sessions(len(image)).run(None, feeds)

    runners["onnxruntime"] = run_session
    return runners


def dynamic_batch_runner(
    network: nn.Module, ckpt_path: Path, image_size: int, threads: int
) -> Callable[[torch.Tensor, Mapping[str, torch.Tensor]], object]:
    """``(image, prompts)`` -> the checkpoint's cached graph (``network`` exported if not yet) run in one
    session whose batch axis is left dynamic."""
    path = onnx_model_path(ckpt_path, image_size)
    if not path.is_file():
        export_onnx(network, path, image_size)
    session = onnx_session(path, threads)

    def run(image: torch.Tensor, prompts: Mapping[str, torch.Tensor]) -> None:
        session.run(None, {"image": image.numpy()} | {key: prompts[key].numpy() for key in PROMPT_KEYS})

    return run


def prompts_for(vocabulary: PromptVocabulary, batch: int) -> dict[str, torch.Tensor]:
    """The breast-lesion segmentation prompt for ``batch`` images."""
    encoded = vocabulary.encode({"position": "breast", "task": "segmentation", "mode": "whole", "type": "tumor"})
    return {key: value.expand(batch, -1).contiguous() for key, value in encoded.items()}


def in_bf16(network: nn.Module) -> Callable[[torch.Tensor, Mapping[str, torch.Tensor]], object]:
    """``network(image, prompts)`` as inference.yaml's ``PromptInferer`` runs it with ``autocast: bf16``."""
    inferer = PromptInferer("bf16")
    return lambda image, prompts: inferer(image, network, prompts)


def time_call(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def planned_names(ckpt_paths: Sequence[Path], references: Sequence[str], dynamic_batch: bool) -> dict[str, str]:
    """The rows a run times, in order: ``"<checkpoint stem or reference> <backend>"`` -> that stem."""
    names = {}
    for path in ckpt_paths:
        for name, (_, _, bf16) in BACKENDS.items():
            if bf16 and not cpu_supports_bf16():
                continue
            names[f"{path.stem} {name}"] = path.stem
        if dynamic_batch:
            names[f"{path.stem} {DYNAMIC}"] = path.stem
    onnx_found = optional_import("onnxruntime")[1]
    for reference in references:
        for backend in ("torch", "onnxruntime") if onnx_found else ("torch",):
            names[f"{reference} {backend}"] = reference
    return names


def build_runners(
    ckpt_paths: Sequence[Path],
    threads: int,
    references: Sequence[str],
    official_repo: str | None,
    dynamic_batch: bool,
    folder: Path,
    only: Collection[str] | None = None,
) -> tuple[dict[str, tuple[str, Callable]], dict[str, int], dict[str, PromptVocabulary]]:
    """The runners of :func:`planned_names`' rows (those in ``only`` if given): name -> (stem, call
    ``(image, prompts)``), and each stem's input size and prompt vocabulary; reference graphs are exported into ``folder``."""
    wanted = planned_names(ckpt_paths, references, dynamic_batch)
    wanted = {name: stem for name, stem in wanted.items() if only is None or name in only}
    runners, images, vocabularies = {}, {}, {}
    for path in ckpt_paths:
        checkpoint = read_checkpoint(path)
        size = checkpoint.description.image_size
        images[path.stem], vocabularies[path.stem] = size, checkpoint.description.prompt_vocabulary
        if path.stem not in wanted.values():
            continue
        network = checkpoint.build()
        for name, (backend, quantize, bf16) in BACKENDS.items():
            if f"{path.stem} {name}" in wanted:
                runner = runtime_network(network, backend, path, size, threads, quantize)
                runners[f"{path.stem} {name}"] = (path.stem, in_bf16(runner) if bf16 else runner)
        if f"{path.stem} {DYNAMIC}" in wanted:
            runners[f"{path.stem} {DYNAMIC}"] = (path.stem, dynamic_batch_runner(network, path, size, threads))
    first = ckpt_paths[0].stem
    needed = [reference for reference in references if any(stem == reference for stem in wanted.values())]
    for reference, (network, prompted) in reference_networks(needed, read_checkpoint(ckpt_paths[0]), official_repo).items():
        images[reference], vocabularies[reference] = images[first], vocabularies[first]
        backends = reference_runners(reference, network, prompted, images[first], vocabularies[first], threads, folder)
        for backend, runner in backends.items():
            if f"{reference} {backend}" in wanted:
                runners[f"{reference} {backend}"] = (reference, runner)
    return runners, images, vocabularies


def measure(
    ckpt_paths: Sequence[Path],
    threads: int,
    batches: Sequence[int],
    rounds: int,
    references: Sequence[str] = (),
    official_repo: str | None = None,
    dynamic_batch: bool = False,
    processes: int = 0,
) -> dict:
    """``"<checkpoint stem or reference> <backend>"`` -> batch -> median milliseconds per call, and the
    ratios; in this process (``processes`` 0, :func:`interleaved_medians`) or each row alone in
    ``processes`` fresh ones (:func:`isolated_medians`; the fastest process's median)."""
    if len({path.stem for path in ckpt_paths} | set(references)) < len(ckpt_paths) + len(references):
        raise ValueError(
            f"rows are named by checkpoint file stem and reference, which must differ: {[str(p) for p in ckpt_paths]}, {list(references)}"
        )
    check_references(references, official_repo)  # fails here, not in a child process
    torch.set_num_threads(threads)
    plan = (list(ckpt_paths), threads, list(references), official_repo, dynamic_batch)
    names = planned_names(ckpt_paths, references, dynamic_batch)
    per_process = {}
    if processes:
        per_process = isolated_medians(plan, list(names), batches, rounds, processes)
        # the least disturbed process, as cine_fps keeps its fastest repeat: a process's speed can
        # drift for seconds at a time, and a row's processes may all draw a slow stretch
        medians = {name: {batch: min(values) for batch, values in rows.items()} for name, rows in per_process.items()}
        images = {path.stem: read_checkpoint(path).description.image_size for path in ckpt_paths}
        images |= {reference: images[ckpt_paths[0].stem] for reference in references}
    else:
        with tempfile.TemporaryDirectory() as folder:
            runners, images, vocabularies = build_runners(*plan, Path(folder))
            medians = interleaved_medians(runners, images, vocabularies, batches, rounds)
    first = ckpt_paths[0].stem
    vs_torch = {name: {b: medians[f"{stem} torch"][b] / ms for b, ms in medians[name].items()} for name, stem in names.items()}
    vs_first = {
        name: {b: medians[name.replace(stem, first, 1)][b] / ms for b, ms in medians[name].items()}
        for name, stem in names.items()
    }
    return {"ckpt_paths": [str(path) for path in ckpt_paths], "references": list(references), "image_sizes": images,
            "threads": threads, "rounds": rounds, "processes": processes, "ms": medians, "ms_per_process": per_process, "speed_up_vs_torch": vs_torch,
            "speed_up_vs_first": vs_first, "machine": machine()}  # fmt: skip


def block_medians(runner: Callable, image_size: int, vocabulary: PromptVocabulary, batches: Sequence[int], rounds: int) -> dict[int, float]:
    """batch -> median milliseconds of ``rounds`` consecutive calls of one runner (after a warm-up call)."""
    medians = {}
    with torch.inference_mode():
        for batch in batches:
            image = torch.rand(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
            prompts = prompts_for(vocabulary, batch)
            runner(image, prompts)  # the first call allocates and picks kernels
            medians[batch] = 1000 * statistics.median(time_call(lambda: runner(image, prompts)) for _ in range(rounds))
    return medians


def time_alone(plan: tuple, name: str, batches: Sequence[int], rounds: int) -> dict[int, float]:
    """:func:`block_medians` of the row ``name`` built and run alone (in a fresh process)."""
    torch.set_num_threads(plan[1])
    with tempfile.TemporaryDirectory() as folder:
        runners, images, vocabularies = build_runners(*plan, Path(folder), only={name})
        stem, runner = runners[name]
        return block_medians(runner, images[stem], vocabularies[stem], batches, rounds)


def isolated_medians(plan: tuple, names: Sequence[str], batches: Sequence[int], rounds: int, processes: int) -> dict[str, dict[int, list[float]]]:
    """name -> batch -> the median of ``rounds`` consecutive calls in each of ``processes`` fresh
    processes per row; the rows' processes take turns (one at a time: row 1, row 2, …, then again),
    so that a slower stretch of the machine can hit a teacher and its student alike."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no other row's sessions or threads
    samples: dict[str, dict[int, list[float]]] = {name: {batch: [] for batch in batches} for name in names}
    for _ in range(processes):
        for name in names:
            with context.Pool(1) as pool:
                for batch, ms in pool.apply(time_alone, (plan, name, batches, rounds)).items():
                    samples[name][batch].append(ms)
    return samples


def interleaved_medians(
    runners: Mapping[str, tuple[str, Callable]],
    images: Mapping[str, int],
    vocabularies: Mapping[str, PromptVocabulary],
    batches: Sequence[int],
    rounds: int,
) -> dict[str, dict[int, float]]:
    """name -> batch -> median milliseconds of ``rounds`` calls; runners named ``"<stem> <backend>"``
    are timed runtime by runtime (the backend's name up to its first ``-``), each runner of a
    runtime called once per round."""
    medians: dict[str, dict[int, float]] = {name: {} for name in runners}
    by_runtime: dict[str, list[str]] = {}
    for name, (stem, _) in runners.items():
        by_runtime.setdefault(name[len(stem) + 1 :].split("-")[0], []).append(name)
    with torch.inference_mode():
        for batch in batches:
            inputs = {
                stem: (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)), prompts_for(vocabularies[stem], batch))
                for stem, size in images.items()
            }
            for names in by_runtime.values():
                for name in names:  # warm-up: first calls allocate and pick kernels
                    stem, runner = runners[name]
                    runner(*inputs[stem])
                samples: dict[str, list[float]] = {name: [] for name in names}
                for _ in range(rounds):
                    for name in names:
                        stem, runner = runners[name]
                        samples[name].append(time_call(lambda: runner(*inputs[stem])))
                for name in names:
                    medians[name][batch] = 1000 * statistics.median(samples[name])
    return medians


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
    parser.add_argument("--references", nargs="*", default=[], choices=REFERENCES)
    parser.add_argument("--official_repo", help="checkout or git directory of the official code (reference 'official')")
    parser.add_argument("--dynamic_batch", action="store_true", help="add each checkpoint's graph in a session with a dynamic batch axis")
    parser.add_argument(
        "--processes", type=int, default=0,
        help="time each row alone in this many fresh processes (taking turns), not interleaved in this one",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(
        args.ckpt_path, args.threads, args.batches, args.rounds, args.references, args.official_repo, args.dynamic_batch, args.processes
    )
    protocol = (
        f"each row alone, median of {args.rounds} consecutive calls in the fastest of {args.processes} processes"
        if args.processes
        else f"median of {args.rounds} interleaved calls"
    )
    title = f"{', '.join(map(str, args.ckpt_path))}: {args.threads} threads, {protocol}"
    return report(title, table(result), result, args.json)


if __name__ == "__main__":
    main()
