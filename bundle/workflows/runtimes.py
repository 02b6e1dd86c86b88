"""Inference backends: the network in eager PyTorch, or exported to ONNX and run by ONNX Runtime.

``backend: onnxruntime`` in configs/inference.yaml exports the network once per checkpoint and
input size (the four prompts are inputs of the graph, so one file serves every organ), caches the
file beside the checkpoint under the checkpoint's sha256, and runs it with ONNX Runtime's CPU
provider at the config's thread count. ``quantize: int8`` runs ONNX Runtime's dynamic int8
quantization of the exported graph's matrix products instead. The graph's batch axis is dynamic:
an fp32 batch is one call (1.3-1.4x faster at batch 8 than a call per image, threads not spinning),
and a single image runs in a session that fixes the batch axis at 1, so that ONNX Runtime folds
the graph's shape arithmetic into constants (:class:`BatchSessions`); an int8 batch stays a call per image, since dynamic quantization scales each call's activations
as a whole and an image's mask would depend on its neighbours. ``backend: auto`` (the default)
takes ONNX Runtime on a CPU where it is installed and the network exports, else eager PyTorch (a
fallback says why in the log): ONNX Runtime's masks agreed with eager fp32 on 100 % of the demo
test pixels (docs/performance.md).

Config use::

    network: "$bundle.workflows.runtimes.runtime_network(@network_def, @backend, @ckpt_path, @input_size, @num_threads, @quantize, @onnx_spinning)"
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import look_up_option, optional_import
from torch import nn

from bundle.flags import as_flag
from bundle.hashing import file_digest
from bundle.prompts import PROMPT_KEYS

__all__ = ["BACKENDS", "QUANTIZATIONS", "BatchSessions", "OnnxRuntimeNetwork", "export_onnx", "onnx_model_path", "onnx_session", "onnx_session_options", "runtime_network"]

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "onnxruntime")
QUANTIZATIONS = ("none", "int8")
INPUT_NAMES = ("image", *PROMPT_KEYS)
OUTPUT_NAMES = ("seg_logits", "cls_logits")
BATCH_AXIS = "batch"


def onnx_model_path(ckpt_path: str | Path, image_size: int, quantize: str = "none") -> Path:
    """Where the exported graph of ``ckpt_path`` at ``image_size`` is cached: beside the checkpoint,
    named by its sha256 (``<stem>.<sha256[:16]>.<size>.anybatch[.int8].onnx``: graphs cached by
    earlier versions, exported at batch 1 only, lack ``anybatch`` and are not read), or in
    ``$XDG_CACHE_HOME/perceptguide`` when that folder is not writable."""
    ckpt_path = Path(ckpt_path)
    name = f"{ckpt_path.stem}.{file_digest(ckpt_path)[:16]}.{image_size}.anybatch{'.int8' if quantize == 'int8' else ''}.onnx"
    folder = ckpt_path.parent
    if not os.access(folder, os.W_OK):
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "perceptguide"
        folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def export_onnx(network: nn.Module, path: Path, image_size: int) -> Path:
    """Export ``network`` (image and the four one-hot prompts in, seg and cls logits out), its batch
    axis dynamic, to ``path``, atomically (a temporary file, then a rename)."""
    network = network.eval()
    # traced at batch 2: a trace at batch 1 could fold the batch into reshapes as a constant
    image = torch.zeros(2, network.in_channels, image_size, image_size)
    prompts = {key: torch.zeros(2, size) for key, size in network.prompt_sizes.items()}
    for prompt in prompts.values():
        prompt[:, 0] = 1.0
    handle, partial = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the classification decoder's pooled size is an int on purpose: a constant of the graph
            warnings.filterwarnings("ignore", message="Converting a tensor to a Python integer")
            # the trailing {} tells the exporter that the prompts dict is a positional argument
            torch.onnx.export(
                network, (image, prompts, {}), partial, dynamo=False,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: BATCH_AXIS} for name in INPUT_NAMES + OUTPUT_NAMES},
            )  # fmt: skip
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


def quantize_int8(source: Path, path: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of ``source``'s matrix products, written to ``path``."""
    quantization, _ = optional_import("onnxruntime.quantization")
    handle, partial = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        quantization.quantize_dynamic(str(source), partial, weight_type=quantization.QuantType.QInt8)
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path


def onnx_session_options(threads: int, spinning: bool = False, batch: int | None = None):
    """ONNX Runtime session options: ``threads`` intra-op threads, spin-waiting after a call only if
    ``spinning`` (see :class:`OnnxRuntimeNetwork`), the graph's ``batch`` axis fixed at ``batch`` if given."""
    onnxruntime, found = optional_import("onnxruntime")
    if not found:
        raise ImportError("backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(int(threads), 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if batch is not None:
        options.add_free_dimension_override_by_name(BATCH_AXIS, int(batch))
    return options


def onnx_session(path: str | Path, threads: int, spinning: bool = False, batch: int | None = None):
    """An ONNX Runtime CPU session of the graph at ``path`` with :func:`onnx_session_options`."""
    options = onnx_session_options(threads, spinning, batch)  # first: says what to install if onnxruntime is missing
    return optional_import("onnxruntime")[0].InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class BatchSessions:
    """The two ONNX Runtime sessions of a graph whose batch axis is dynamic (``session = sessions(batch)``):
    one with that axis fixed at 1, for single images (live video, the Label app), and one with it left
    dynamic, for batches; each made at its first call, so that a process that runs only single images
    holds one session and one thread pool.

    With every dimension known, ONNX Runtime folds the reshapes' shape arithmetic (``Shape``,
    ``Gather``, ``Concat`` nodes) into constants: the shipped student's graph shrank from 829 to 472
    nodes and its batch-1 call took 4 % less time, the teacher's 8-10 %; a batch of 8 gained nothing
    (docs/performance.md), so batches share the dynamic session instead of one per batch size.

    Args:
        path: the graph (:func:`export_onnx`: its batch axis is named ``batch``).
        threads, spinning: :func:`onnx_session_options`'s.
        batched: whether batches may run; not for a graph run image by image.
    """

    def __init__(self, path: str | Path, threads: int = 1, spinning: bool = False, batched: bool = True) -> None:
        self.path, self.threads, self.spinning, self.batched = Path(path), threads, spinning, batched
        self.made: dict[int | None, Any] = {}  # fixed batch (or None: dynamic) -> session

    def __call__(self, batch: int):
        """The session for calls of ``batch`` images.

        Raises:
            ValueError: a batch of several images where batches may not run.
        """
        if batch != 1 and not self.batched:
            raise ValueError(f"these sessions run one image per call, got a batch of {batch}")
        fixed = 1 if batch == 1 else None
        if fixed not in self.made:
            self.made[fixed] = onnx_session(self.path, self.threads, self.spinning, batch=fixed)
        return self.made[fixed]


class OnnxRuntimeNetwork(nn.Module):
    """A PerceptGuide graph run by ONNX Runtime: called as the network is, ``(image, prompts) -> (seg, cls)``.

    Args:
        path: the exported graph (:func:`export_onnx`).
        threads: ONNX Runtime's intra-op threads.
        spinning: whether those threads spin-wait for work after a call (ONNX Runtime's default).
            Off by default: in an inference pipeline PyTorch's own threads read, resize and write on
            the same cores between calls, and spinning threads take their time (docs/performance.md).
        per_image: one call per image instead of one per batch; for int8 graphs, whose dynamic
            quantization scales a call's activations together.
    """

    def __init__(self, path: str | Path, threads: int = 1, spinning: bool = False, per_image: bool = False) -> None:
        super().__init__()
        self.path, self.per_image = Path(path), per_image
        self.sessions = BatchSessions(path, threads, spinning, batched=not per_image)
        self.sessions(1)  # reads the graph now: a missing package or a bad file fails here, not at the first image

    def forward(self, image: torch.Tensor, prompts: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, C, H, W), prompts {key: (B, n_k), or (n_k,) shared by the batch} -> seg logits
        (B, K, H, W), cls logits (B, J)."""
        batch = image.shape[0]
        feeds = {"image": image.float().cpu().numpy()}
        for key in PROMPT_KEYS:
            value = prompts[key].expand(batch, -1) if prompts[key].dim() == 1 else prompts[key]
            feeds[key] = value.float().cpu().contiguous().numpy()
        calls = [feeds]
        if self.per_image:
            calls = [{key: value[index : index + 1] for key, value in feeds.items()} for index in range(batch)]
        outputs = [self.sessions(len(call["image"])).run(list(OUTPUT_NAMES), call) for call in calls]
        seg_logits, cls_logits = (torch.from_numpy(np.concatenate(arrays)) for arrays in zip(*outputs))
        return seg_logits.to(image.device), cls_logits.to(image.device)


def runtime_network(
    network: nn.Module,
    backend: str,
    ckpt_path: str | Path,
    image_size: int,
    threads: int = 1,
    quantize: str = "none",
    spinning: bool = False,
) -> nn.Module:
    """``network`` itself for ``backend`` torch; for onnxruntime, its cached (exported on first use,
    int8-quantized if asked) graph in an :class:`OnnxRuntimeNetwork`; for auto, the latter where
    onnxruntime is installed and the export succeeds, else the former (each fallback logged).
    ``spinning``: :class:`OnnxRuntimeNetwork`'s (a bool, or the text ``--onnx_spinning false`` hands the config).

    Raises:
        ValueError: an unknown backend or quantization, or int8 with the torch backend.
    """
    backend = look_up_option(backend, BACKENDS)
    quantize = look_up_option(str(quantize).lower(), QUANTIZATIONS)
    spinning = as_flag(spinning, "onnx_spinning")
    if backend == "torch":
        if quantize != "none":
            raise ValueError("quantize 'int8' runs on the onnxruntime backend: add --backend onnxruntime")
        return network
    if backend == "auto":
        if torch.cuda.is_available():  # inference.yaml then runs on the GPU, where eager PyTorch belongs
            return runtime_network(network, "torch", ckpt_path, image_size, threads, quantize, spinning)
        if not optional_import("onnxruntime")[1]:
            logger.warning("backend auto: onnxruntime is not installed (pip install onnxruntime); running eager PyTorch")
            return runtime_network(network, "torch", ckpt_path, image_size, threads, quantize, spinning)
        try:
            return runtime_network(network, "onnxruntime", ckpt_path, image_size, threads, quantize, spinning)
        except (RuntimeError, ValueError) as err:  # the exporter's errors are RuntimeErrors
            logger.warning("backend auto: %s did not export to ONNX (%s); running eager PyTorch", ckpt_path, err)
            return runtime_network(network, "torch", ckpt_path, image_size, threads, quantize, spinning)
    path = onnx_model_path(ckpt_path, image_size, quantize)
    if not path.is_file():
        plain = onnx_model_path(ckpt_path, image_size)
        if not plain.is_file():
            logger.info("exporting %s at %d² to %s", ckpt_path, image_size, plain)
            export_onnx(network.cpu(), plain, image_size)
        if quantize == "int8":
            logger.info("quantizing %s to int8: %s", plain, path)
            quantize_int8(plain, path)
    logger.info("backend onnxruntime: %s, %d threads%s", path, threads, ", spinning" if spinning else "")
    return OnnxRuntimeNetwork(path, threads, spinning, per_image=quantize == "int8")
