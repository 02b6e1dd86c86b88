"""End-to-end frames per second of the bare inference command on a cine loop.

The loop is a 3-D NIfTI (H, W, T) of real thyroid frames no model here was trained on: TG3K
frames of ``../shared/unlabelled`` that are not in the labelled data, not augmented copies
(``/train/`` sources), in the order of their source frame numbers (short runs of several videos:
the pool keeps no long run of one video). Each setting runs the inference command as a user
types it (``--config_file configs/inference.yaml --input_dir DIR --ckpt_path CKPT --organ
thyroid --object_type organ``, plus ``--backend`` where the setting names one and any further
config overrides it lists) on a folder
holding the loop of T frames and on one holding its first frame as a loop of 1; the per-frame
cost is (t(T) − t(1)) / (T − 1) of the command's wall time, so the start-up, reading the
checkpoint and exporting the ONNX graph cancel, and reading the frames, writing the masks,
overlays and CSV count. Settings alternate, repeat ``--repeats`` times; the fastest time of each
is kept (the least disturbed run). The start-up's own spread between runs (about a second here)
moves that difference by ~10 ms a frame, so the table also gives the frames per second the command
logs for its engine's run over the T frames (start-up excluded; the best of the repeats).

Usage::

    python -m benchmarks.cine_fps [--settings "NAME=CKPT[:BACKEND] [--KEY VALUE ...]" ...] [--frames 100] \\
        [--repeats 2] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from benchmarks import BUNDLE_ROOT
from benchmarks.benchmark import machine, report

UNLABELLED_DIR = BUNDLE_ROOT.parent / "shared" / "unlabelled"
DEFAULT_SETTINGS = (
    f"teacher torch={BUNDLE_ROOT / 'models' / 'pretrained.pt'}:torch",
    f"teacher onnxruntime={BUNDLE_ROOT / 'models' / 'pretrained.pt'}:onnxruntime",
)


def unseen_thyroid_frames(unlabelled_dir: Path, count: int) -> list[Path]:
    """``count`` TG3K pool frames outside the labelled data and not augmented, by source frame number."""
    with open(unlabelled_dir / "provenance.csv", newline="", encoding="utf-8") as handle:
        rows = [
            row for row in csv.DictReader(handle)
            if row["dataset"] == "TG3K" and row["also_in_shared_labelled"] == "no" and "/train/" not in row["source_path"]
        ]  # fmt: skip
    rows.sort(key=lambda row: int(re.search(r"(\d+)\.\w+$", row["source_path"])[1]))
    if len(rows) < count:
        raise ValueError(f"{unlabelled_dir} has {len(rows)} such frames, fewer than {count}")
    return [unlabelled_dir / "tg3k" / f"{row['id']}.png" for row in rows[:count]]


def write_loop(frames: Sequence[Path], path: Path) -> Path:
    """The frames (same size, gray) as one (H, W, T) uint8 NIfTI at ``path``, identity affine."""
    volume = np.stack([np.asarray(Image.open(frame).convert("L")) for frame in frames], axis=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def parse_setting(text: str) -> tuple[str, Path, str | None, list[str]]:
    """``NAME=CKPT[:BACKEND] [--KEY VALUE ...]`` -> (name, checkpoint, backend or None for the config's
    default, the further config overrides as command-line arguments)."""
    name, _, target = text.partition("=")
    words = shlex.split(target) or [""]
    checkpoint, _, backend = words[0].partition(":")
    overrides = words[1:]
    if not name or not checkpoint or len(overrides) % 2 or not all(key.startswith("--") for key in overrides[::2]):
        raise ValueError(f"a setting is NAME=CKPT[:BACKEND] [--KEY VALUE ...], got {text!r}")
    return name, Path(checkpoint), backend or None, overrides


ENGINE_RATE = re.compile(r"([0-9.]+) frames/s")


def command_seconds(
    input_dir: Path, output_dir: Path, checkpoint: Path, backend: str | None, threads: int, overrides: Sequence[str] = ()
) -> tuple[float, float, float | None]:
    """Wall time (s), peak resident memory (MiB) and the logged engine frames/s (None if not logged)
    of one bare inference command on ``input_dir`` (with ``overrides``, e.g. ``["--onnx_spinning", "true"]``)."""
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
        "--input_dir", str(input_dir), "--output_dir", str(output_dir), "--ckpt_path", str(checkpoint),
        "--organ", "thyroid", "--object_type", "organ",
    ]  # fmt: skip
    if backend:
        command += ["--backend", backend]
    command += list(overrides)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=BUNDLE_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: its peak RSS
        seconds = time.perf_counter() - start
        log.seek(0)
        text = log.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"inference failed on {input_dir}:\n{text[-3000:]}")
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait for it again
    rates = ENGINE_RATE.findall(text)
    return seconds, usage.ru_maxrss / 1024, float(rates[-1]) if rates else None


def frames_written(output_dir: Path) -> int:
    """Rows of the ``predictions.csv`` the inference command wrote in ``output_dir``: one per frame."""
    with open(output_dir / "predictions.csv", newline="", encoding="utf-8") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def measure(settings: Sequence[str], frames: int, repeats: int, threads: int, unlabelled_dir: Path) -> dict:
    """setting -> seconds for 1 and for ``frames`` frames, ms per frame and frames per second."""
    parsed = [parse_setting(text) for text in settings]
    sources = unseen_thyroid_frames(unlabelled_dir, frames)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        loops = {1: write_loop(sources[:1], root / "one" / "loop.nii.gz"), frames: write_loop(sources, root / "all" / "loop.nii.gz")}
        times: dict[str, dict[int, list[float]]] = {name: {1: [], frames: []} for name, *_ in parsed}
        peak: dict[str, float] = {name: 0.0 for name, *_ in parsed}
        engine: dict[str, float] = {name: 0.0 for name, *_ in parsed}
        for name, checkpoint, backend, overrides in parsed:  # warm-up: exports the ONNX graph, fills the file cache
            command_seconds(loops[1].parent, root / "out", checkpoint, backend, threads, overrides)
        for _ in range(repeats):
            for name, checkpoint, backend, overrides in parsed:
                for length, loop in loops.items():
                    seconds, mib, rate = command_seconds(loop.parent, root / "out", checkpoint, backend, threads, overrides)
                    written = frames_written(root / "out")
                    if written != length:  # a short loop read as channels would time one frame
                        raise RuntimeError(f"{name}: the command wrote {written} rows for a loop of {length} frames")
                    times[name][length].append(seconds)
                    peak[name] = max(peak[name], mib)
                    if length == frames and rate:
                        engine[name] = max(engine[name], rate)
    results = {}
    for name, checkpoint, backend, overrides in parsed:
        one, many = min(times[name][1]), min(times[name][frames])
        per_frame = (many - one) / (frames - 1)
        results[name] = {"ckpt_path": str(checkpoint), "backend": backend or "config default", "overrides": overrides, "seconds_1": one,
                         f"seconds_{frames}": many, "ms_per_frame": 1000 * per_frame, "frames_per_second": 1 / per_frame,
                         "engine_frames_per_second": engine[name], "peak_rss_mib": peak[name]}  # fmt: skip
    return {"frames": frames, "threads": threads, "repeats": repeats, "settings": results, "machine": machine()}


def table(result: Mapping) -> str:
    frames = result["frames"]
    lines = [f"| setting | backend | 1 frame, s | {frames} frames, s | ms per frame | frames/s | engine frames/s | peak RSS, MiB |"]
    lines.append("|---" * 8 + "|")
    for name, row in result["settings"].items():
        lines.append(
            f"| {name} | {' '.join([row['backend'], *row['overrides']])} | {row['seconds_1']:.2f} | {row[f'seconds_{frames}']:.2f} | "
            f"{row['ms_per_frame']:.1f} | {row['frames_per_second']:.1f} | {row['engine_frames_per_second']:.1f} | "
            f"{row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), help="NAME=CKPT[:BACKEND] [--KEY VALUE ...] (config overrides of the command)")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unlabelled_dir", type=Path, default=UNLABELLED_DIR)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = measure(args.settings, args.frames, args.repeats, args.threads, args.unlabelled_dir)
    title = f"bare inference on a {args.frames}-frame NIfTI loop, {args.threads} threads, fastest of {args.repeats}"
    return report(title, table(result), result, args.json)


if __name__ == "__main__":
    main()
