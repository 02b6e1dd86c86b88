"""Where a checkpoint's ONNX Runtime graph spends its time: kernel time per operator type and per module.

The checkpoint's graph is exported (or taken from the cache beside it, ``bundle.workflows.runtimes``)
at its input size and run ``--calls`` times at batch 1 on a random image with the breast-lesion
prompt (the first call, which allocates, included), with ONNX Runtime's profiler on; the kernel times of every node are summed per operator type
and per module (the node name's first ``--depth`` parts, e.g. ``/conv_skips/up.1``) and given per
call, with their share of the total. The profiler's own overhead is in none of these sums.

Usage::

    python -m benchmarks.onnx_profile [--ckpt_path models/pretrained.pt [models/student.pt ...]] \\
        [--threads 2] [--calls 30] [--depth 3] [--top 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.utils import optional_import

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine, report
from benchmarks.runtime_latency import prompts_for
from bundle.networks import read_checkpoint
from bundle.prompts import PROMPT_KEYS
from bundle.workflows.runtimes import onnx_model_path, onnx_session_options, runtime_network


def kernel_times(trace: Sequence[dict], depth: int) -> tuple[collections.Counter, collections.Counter, int]:
    """Summed kernel microseconds per operator type and per module prefix, and the node count, of a
    profiler trace (ONNX Runtime's JSON: events of category ``Node`` named ``<node>_kernel_time``)."""
    per_op, per_module, nodes = collections.Counter(), collections.Counter(), 0
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        nodes += 1
        per_op[event["args"]["op_name"]] += event["dur"]
        per_module["/".join(event["name"].split("/")[:depth]) or event["name"]] += event["dur"]
    return per_op, per_module, nodes


def profile(ckpt_path: Path, threads: int, calls: int, depth: int) -> dict:
    """Per-call kernel microseconds per operator type and module of one checkpoint's graph."""
    checkpoint = read_checkpoint(ckpt_path)
    size = checkpoint.description.image_size
    runtime_network(checkpoint.build(), "onnxruntime", ckpt_path, size, threads)  # exports once, if not cached
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    prompts = prompts_for(checkpoint.description.prompt_vocabulary, 1)
    feeds = {"image": image.numpy()} | {key: prompts[key].numpy() for key in PROMPT_KEYS}
    onnxruntime = optional_import("onnxruntime")[0]
    with tempfile.TemporaryDirectory() as folder:
        options = onnx_session_options(threads, batch=1)  # as the bundle's sessions
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = onnxruntime.InferenceSession(str(onnx_model_path(ckpt_path, size)), options, providers=["CPUExecutionProvider"])
        for _ in range(calls):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_op, per_module, nodes = kernel_times(trace, depth)
    total = sum(per_op.values())
    return {
        "nodes_per_call": nodes / calls,
        "kernel_us_per_call": total / calls,
        "per_op_us": {op: us / calls for op, us in per_op.most_common()},
        "per_module_us": {module: us / calls for module, us in per_module.most_common()},
    }


def table(results: dict, top: int) -> str:
    lines = []
    for name, result in results.items():
        total = result["kernel_us_per_call"]
        lines += [f"{name}: {result['nodes_per_call']:.0f} nodes, {total / 1000:.2f} ms of kernels per call", "",
                  "| operator | ms per call | share | | module | ms per call | share |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        ops, modules = list(result["per_op_us"].items())[:top], list(result["per_module_us"].items())[:top]
        for (op, op_us), (module, module_us) in zip(ops, modules):
            lines.append(f"| {op} | {op_us / 1000:.2f} | {op_us / total:.0%} | | {module} | {module_us / 1000:.2f} | {module_us / total:.0%} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", type=Path, nargs="+", default=[BUNDLE_ROOT / "models" / "pretrained.pt"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--depth", type=int, default=3, help="name parts that make a module: /conv_skips/up.1 is 3")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {str(path): profile(path, args.threads, args.calls, args.depth) for path in args.ckpt_path}
    record = {"threads": args.threads, "calls": args.calls, "profiles": results, "machine": machine()}
    return report(f"ONNX Runtime kernel time, {args.threads} threads, {args.calls} calls at batch 1", table(results, args.top), record, args.json)


if __name__ == "__main__":
    main()
