"""Inference backends: the network exported to ONNX and run by ONNX Runtime (fp32 and int8), through
``monai.bundle run`` as a user runs inference, against eager PyTorch."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.hashing import file_digest
from bundle.networks import read_checkpoint
from bundle.prompts import DEFAULT_VOCABULARY
from bundle.workflows.runtimes import BatchSessions, OnnxRuntimeNetwork, onnx_model_path, onnx_session, runtime_network
from tests.bundle_runner import DEMO_DIR, REPO_ROOT, bundle_command, subprocess_env
from tests.conftest import TINY_SIZE, tiny_network, write_checkpoint

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def infer(images, output, checkpoint, *extra: str) -> str:
    import subprocess

    command = bundle_command(
        "run", "--config_file", "configs/inference.yaml", "--input_dir", str(images), "--output_dir", str(output),
        "--organ", "thyroid", "--object_type", "organ", "--ckpt_path", str(checkpoint), *extra,
    )  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def rows(output) -> list[dict]:
    return list(csv.DictReader(open(output / "predictions.csv")))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for source in sorted((DEMO_DIR / "segmentation" / "TG3K" / "imgs").glob("*.png"))[:3]:
        shutil.copy(source, folder)
    return folder


def test_the_onnxruntime_backend_infers_what_torch_does_and_caches_its_graph_by_the_checkpoint(tmp_path, images):
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    # fp32 eager: on a CPU with native bf16 the config's autocast would run torch in bf16
    infer(images, tmp_path / "torch", checkpoint, "--backend", "torch", "--autocast", "none")
    log = infer(images, tmp_path / "ort", checkpoint, "--backend", "onnxruntime", "--num_threads", "1")
    cached = tmp_path / f"model.{file_digest(checkpoint)[:16]}.{TINY_SIZE}.anybatch.onnx"
    assert cached.is_file() and "exporting" in log
    for eager, exported in zip(rows(tmp_path / "torch"), rows(tmp_path / "ort"), strict=True):
        assert eager["file"] == exported["file"]
        assert abs(float(eager["p_class0"]) - float(exported["p_class0"])) < 1e-4
        mask_eager = np.array(Image.open(tmp_path / "torch" / eager["file"]))
        mask_ort = np.array(Image.open(tmp_path / "ort" / eager["file"]))
        assert (mask_eager == mask_ort).mean() > 0.999
    again = infer(images, tmp_path / "again", checkpoint, "--onnx_spinning", "true")
    assert "exporting" not in again and ", spinning" in again  # the default, auto: the cached graph


def test_the_inference_command_averages_the_mirrored_view_when_asked(tmp_path, images):
    """``--test_time_flip true`` reaches the inferer through the config: the class probabilities of the
    same images change (the tiny network is not mirror-symmetric), on the ONNX Runtime backend too."""
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    infer(images, tmp_path / "plain", checkpoint, "--backend", "onnxruntime")
    infer(images, tmp_path / "flip", checkpoint, "--backend", "onnxruntime", "--test_time_flip", "true")
    plain, flipped = rows(tmp_path / "plain"), rows(tmp_path / "flip")
    assert [row["file"] for row in plain] == [row["file"] for row in flipped]
    assert any(abs(float(a["p_class0"]) - float(b["p_class0"])) > 1e-5 for a, b in zip(plain, flipped))


def test_int8_runs_on_onnxruntime_and_is_refused_on_torch(tmp_path, images):
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    infer(images, tmp_path / "int8", checkpoint, "--backend", "onnxruntime", "--quantize", "int8")
    assert len(rows(tmp_path / "int8")) == 3
    assert (tmp_path / f"model.{file_digest(checkpoint)[:16]}.{TINY_SIZE}.anybatch.int8.onnx").is_file()
    with pytest.raises(ValueError, match="quantize 'int8' runs on the onnxruntime backend"):
        runtime_network(torch.nn.Identity(), "torch", checkpoint, TINY_SIZE, quantize="int8")
    with pytest.raises(ValueError, match="tensorrt"):
        runtime_network(torch.nn.Identity(), "tensorrt", checkpoint, TINY_SIZE)


def test_the_onnx_graph_takes_the_prompts_so_one_file_serves_every_organ_and_any_batch(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    network = read_checkpoint(checkpoint).build()
    runner = runtime_network(network, "onnxruntime", checkpoint, TINY_SIZE, threads=1)
    assert isinstance(runner, OnnxRuntimeNetwork) and runner.path == onnx_model_path(checkpoint, TINY_SIZE)
    assert not runner.per_image  # a batch is one call
    image = torch.rand(3, 3, TINY_SIZE, TINY_SIZE)
    names = [("breast", "tumor"), ("thyroid", "organ"), ("head", "organ")]
    encoded = [DEFAULT_VOCABULARY.encode({"position": o, "task": "segmentation", "mode": "whole", "type": t}) for o, t in names]
    prompts = {key: torch.stack([e[key] for e in encoded]) for key in encoded[0]}
    with torch.no_grad():
        for expected, got in zip(network(image, prompts), runner(image, prompts)):
            assert expected.shape == got.shape and (expected - got).abs().max() < 1e-4


def test_single_images_run_with_the_batch_axis_fixed_and_batches_in_the_dynamic_session(tmp_path):
    """A batch-1 session with the graph's batch axis fixed (ONNX Runtime then folds the reshapes' shape
    arithmetic) gives the dynamic session's outputs to the bit; batches of any size share the dynamic one;
    each session is made at its first call, so that single images alone hold one thread pool."""
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    network = read_checkpoint(checkpoint).build()
    path = runtime_network(network, "onnxruntime", checkpoint, TINY_SIZE, threads=1).path
    dynamic = onnx_session(path, threads=1)
    sessions = BatchSessions(path, threads=1)
    assert sessions.made == {}
    assert sessions(1).get_inputs()[0].shape == [1, 3, TINY_SIZE, TINY_SIZE]
    assert list(sessions.made) == [1]
    assert sessions(2) is sessions(5) and sessions(2).get_inputs()[0].shape[0] == "batch"
    feeds = {"image": np.random.default_rng(0).random((1, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)}
    feeds |= {key: np.eye(size, dtype=np.float32)[[1]] for key, size in network.prompt_sizes.items()}
    for expected, got in zip(dynamic.run(None, feeds), sessions(1).run(None, feeds)):
        assert np.array_equal(expected, got)
    with pytest.raises(ValueError, match="one image per call, got a batch of 3"):
        BatchSessions(path, threads=1, batched=False)(3)


def test_a_bad_cached_graph_fails_when_the_network_is_made_naming_the_file(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    network = read_checkpoint(checkpoint).build()
    onnx_model_path(checkpoint, TINY_SIZE).write_bytes(b"not an onnx graph")
    with pytest.raises(Exception, match="model.*anybatch.onnx"):
        runtime_network(network, "onnxruntime", checkpoint, TINY_SIZE, threads=1)


def test_auto_takes_onnxruntime_and_falls_back_to_torch_saying_why(tmp_path, monkeypatch, caplog):
    from bundle.workflows import runtimes

    checkpoint = write_checkpoint(tmp_path / "model.pt")
    network = read_checkpoint(checkpoint).build()
    assert isinstance(runtime_network(network, "auto", checkpoint, TINY_SIZE), OnnxRuntimeNetwork)
    one_by_one = write_checkpoint(tmp_path / "small.pt", tiny_network(img_size=32))  # a 1×1 bottleneck map
    small = read_checkpoint(one_by_one).build()
    with caplog.at_level("WARNING"):
        assert runtime_network(small, "auto", one_by_one, 32) is small
    assert "did not export to ONNX" in caplog.text
    monkeypatch.setattr(runtimes, "optional_import", lambda name: (None, False))
    with caplog.at_level("WARNING"):
        assert runtime_network(network, "auto", checkpoint, TINY_SIZE) is network
    assert "onnxruntime is not installed" in caplog.text


def test_an_int8_image_gets_the_same_logits_alone_and_in_a_batch(tmp_path):
    """Dynamic quantization scales a call's activations together, so int8 batches run image by image."""
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    runner = runtime_network(read_checkpoint(checkpoint).build(), "onnxruntime", checkpoint, TINY_SIZE, threads=1, quantize="int8")
    assert runner.per_image
    image = torch.rand(4, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    image[1:] *= 5  # neighbours of a much wider range would change a shared activation scale
    prompts = DEFAULT_VOCABULARY.encode({"position": "thyroid", "task": "segmentation", "mode": "whole", "type": "organ"})
    alone, batched = runner(image[:1], prompts), runner(image, prompts)
    assert torch.equal(alone[0][0], batched[0][0]) and torch.equal(alone[1][0], batched[1][0])


def test_onnx_runtime_threads_spin_only_when_asked(tmp_path):
    """Spinning threads would hold the cores that the pipeline's reading and writing need between calls."""
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    network = read_checkpoint(checkpoint).build()
    # the config hands over the text of --onnx_spinning false / true
    for spinning, entry in ((False, "0"), (True, "1"), ("false", "0"), ("true", "1")):
        runner = runtime_network(network, "onnxruntime", checkpoint, TINY_SIZE, threads=1, spinning=spinning)
        assert runner.sessions(1).get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == entry
