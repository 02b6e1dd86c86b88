"""The real MONAI Label server over this bundle (apps/monailabel), tested over HTTP on loopback.

One server for the module: ``scripts/label_server.sh`` (which builds or reuses the server's own
venv through ``scripts/label_venv.sh``, then runs ``monailabel start_server``) on a free
127.0.0.1 port, over a studies folder of demo images. The weights it serves start as an
untrained self-describing checkpoint of the tiny test network (the server is given nothing
else) and are trained by the server itself, through the bundle's fine-tuning stage, before the
masks are checked against the ground truth. The server's
whole process group is stopped at the end, also when a test fails.
"""

from __future__ import annotations

import concurrent.futures
import email
import email.policy
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.hashing import file_digest
from tests.conftest import REPO_ROOT
from tests.label_support import HEADS, head_images, served_checkpoint

APP = REPO_ROOT / "apps" / "monailabel"
# what `monailabel start_server` itself creates inside an app folder
MONAI_LABEL_FOLDERS = ("model", "logs", "bin")
MODEL = "perceptguide"
PROMPTS = {"organ": "head", "object_type": "organ"}
CLASS_NAMES = ["benign", "malignant"]
TRAIN_IMAGES = 6
# 6 labels, batch 6: one step per epoch at the fine-tuning stage's learning rate; 200 steps took
# the tiny network's mean Dice on them from 0.23 to 0.29 (20 steps: no gain)
FULL_EPOCHS = 200
VENV_BUILD_TIMEOUT = 1800  # a cold build takes about 4-7 minutes here
READY_TIMEOUT = 360  # start-up and first requests, with another test file running beside it
TRAIN_TIMEOUT = 600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def session_processes(session: int) -> list[int]:
    """Pids of the live processes in ``session`` (the server script, the server, its training runs)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


class Client:
    """Plain urllib calls to the server; every answer is (status, headers, body bytes)."""

    def __init__(self, base: str, process: subprocess.Popen) -> None:
        self.base = base
        self.process = process

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, timeout: float = 120):
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def info(self) -> dict:
        status, _, body = self.call("GET", "/info/", timeout=30)
        assert status == 200, body
        return json.loads(body)

    def infer(self, image: str, **params: str) -> tuple[int, bytes | dict]:
        """POST /infer; on success (mask array, result JSON), else (status, error JSON)."""
        body, content_type = multipart({"params": json.dumps(params)}, {})
        status, headers, data = self.call("POST", f"/infer/{MODEL}?image={urllib.parse.quote(image)}", body, content_type)
        if status != 200:
            return status, json.loads(data)
        message = email.message_from_bytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + data, policy=email.policy.HTTP
        )
        parts = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True) for part in message.iter_parts()}
        return np.asarray(Image.open(io.BytesIO(parts["image"]))), json.loads(parts["params"])

    def put_label(self, image: str, mask: Path) -> None:
        body, content_type = multipart({}, {"label": (mask.name, mask.read_bytes())})
        status, _, data = self.call("PUT", f"/datastore/label?image={image}&tag=final", body, content_type)
        assert status == 200, data

    def train(self, **params) -> dict:
        """POST /train/<model>, then poll the train status until it ends (bounded)."""
        status, _, data = self.call("POST", f"/train/{MODEL}", json.dumps(params).encode(), "application/json")
        assert status == 200, data
        task = json.loads(data)["id"]
        deadline = time.monotonic() + TRAIN_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(2)
            state = json.loads(self.call("GET", "/train/", timeout=30)[2])
            if state["id"] == task and state["status"] not in ("SUBMITTED", "RUNNING"):
                return state
        pytest.fail(f"training did not end within {TRAIN_TIMEOUT} s")


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    prediction, truth = mask > 0, truth > 0
    return float(2 * (prediction & truth).sum() / max(prediction.sum() + truth.sum(), 1))


def truth_of(image: Path) -> np.ndarray:
    return np.asarray(Image.open(HEADS / "masks" / image.name))


def app_files() -> set[str]:
    """Files in the app folder, apart from MONAI Label's own folders and Python's caches."""
    return {
        path.relative_to(APP).as_posix()
        for path in APP.rglob("*")
        if path.is_file()
        and path.relative_to(APP).parts[0] not in MONAI_LABEL_FOLDERS
        and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def label_venv() -> Path:
    """The server's venv, built once by the same script the server uses (cached by its stamp)."""
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "label_venv.sh")], capture_output=True, text=True, timeout=VENV_BUILD_TIMEOUT
    )
    assert result.returncode == 0, f"label venv build failed:\n{result.stderr[-4000:]}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, label_venv) -> dict:
    """Studies folder, an untrained tiny-network checkpoint, and the app folder's files before the server ran."""
    root = tmp_path_factory.mktemp("label")
    studies = root / "studies"
    studies.mkdir()
    heads = head_images(TRAIN_IMAGES + 1)
    for image in heads:
        shutil.copy(image, studies / image.name)
    (studies / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    model = served_checkpoint(root / "model.pt", seed=0, cls_classes=CLASS_NAMES)
    return {"studies": studies, "model": model, "heads": heads, "app_files": app_files()}


@pytest.fixture(scope="module")
def server(setup) -> Iterator[Client]:
    port = free_port()
    log = open(setup["studies"].parent / "server.log", "w")
    command = [
        str(REPO_ROOT / "scripts" / "label_server.sh"), str(setup["studies"]), str(port),
        "--conf", "model_path", str(setup["model"]),
        "--conf", "device", "cpu",
        "--conf", "organ", PROMPTS["organ"],
        "--conf", "object_type", PROMPTS["object_type"],
        # the network's own masks: the training test measures what training changes, and an untrained
        # tiny network's largest blob is often not the head (the clean-up is tested in test_label_inference)
        "--conf", "keep_largest_component", "false",
        "--conf", "fill_holes", "false",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = Client(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert process.poll() is None, f"server exited early:\n{Path(log.name).read_text()[-4000:]}"
            try:
                if client.call("GET", "/info/", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server not ready in {READY_TIMEOUT} s:\n{Path(log.name).read_text()[-4000:]}"
            time.sleep(1)
        yield client
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for pid in session_processes(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def trained(server, setup) -> dict:
    """Labels of the first head images saved through the API, then a full training run by the server.

    Returns the Dice of the served masks on those images before and after training.
    """
    labelled = setup["heads"][:TRAIN_IMAGES]

    def dices() -> list[float]:
        return [dice(server.infer(image.stem)[0], truth_of(image)) for image in labelled]

    before = dices()
    for image in labelled:
        server.put_label(image.stem, HEADS / "masks" / image.name)
    weights = file_digest(setup["model"])
    state = server.train(mode="full", max_epochs=FULL_EPOCHS)
    assert state["status"] == "DONE", state
    return {"before": before, "after": dices(), "weights_before": weights, "state": state}


def test_info_lists_the_bundle_model_and_its_labels(server):
    info = server.info()
    assert info["version"] == json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())["version"]
    assert list(info["models"]) == [MODEL]
    model = info["models"][MODEL]
    assert model["type"] == "segmentation" and model["dimension"] == 2
    assert model["labels"] == {"foreground": 1} and info["labels"] == ["foreground"]
    assert model["config"]["organ"] == PROMPTS["organ"] and "breast" in model["config"]["allowed_organ"]
    assert info["trainers"][MODEL]["config"]["allowed_mode"] == ["sync", "full"]


@pytest.mark.parametrize(
    "image, params, status, words",
    [
        ("no_such_image", {}, 404, ["no_such_image", "not in the datastore"]),
        (None, {"organ": "spleen"}, 422, ["spleen", "breast", "thyroid"]),
        (None, {"object_type": "bone"}, 422, ["bone", "tumor", "organ"]),
        (None, {"mode": "zoomed"}, 422, ["zoomed", "whole", "local"]),
        ("broken", {}, 422, ["broken.png", "cannot read"]),
    ],
    ids=["unknown-image", "bad-organ", "bad-object-type", "bad-mode", "corrupt-image"],
)
def test_bad_requests_get_a_4xx_naming_the_cause_and_the_server_stays_up(server, setup, image, params, status, words):
    code, error = server.infer(image or setup["heads"][0].stem, **params)
    assert code == status, error
    assert all(word in error["detail"] for word in words), error
    assert MODEL in server.info()["models"]


def test_an_unknown_model_is_a_404_naming_the_served_one(server, setup):
    body, content_type = multipart({"params": "{}"}, {})
    status, _, data = server.call("POST", f"/infer/segmenter?image={setup['heads'][0].stem}", body, content_type)
    assert status == 404 and "'segmenter'" in json.loads(data)["detail"] and MODEL in json.loads(data)["detail"]


@pytest.mark.parametrize("which", [0, TRAIN_IMAGES], ids=["labelled-image", "unlabelled-image"])
def test_infer_returns_a_mask_of_the_exact_image_size_and_probabilities_by_the_checkpoints_class_names(server, setup, which):
    image = setup["heads"][which]
    mask, result = server.infer(image.stem, mode="whole")
    assert mask.shape == truth_of(image).shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert result["foreground_pixels"] == int((mask > 0).sum())
    assert list(result["probabilities"]) == CLASS_NAMES
    assert {key: result[key] for key in PROMPTS} == PROMPTS and result["mode"] == "whole"


def test_full_training_on_labels_saved_through_the_api_makes_masks_overlap_the_truth_more(trained, setup):
    assert trained["weights_before"] != file_digest(setup["model"])
    assert min(trained["after"]) > 0
    assert np.mean(trained["after"]) > np.mean(trained["before"]) + 0.03, trained
    assert any("Epoch" in line for line in trained["state"]["details"]), trained["state"]["details"]


def test_server_mask_equals_the_bare_bundle_inference_command(server, setup, tmp_path):
    image = setup["heads"][TRAIN_IMAGES]
    mask, _ = server.infer(image.stem)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(image, inputs / image.name)
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(REPO_ROOT / "configs" / "inference.yaml"),
        "--bundle_root", str(REPO_ROOT), "--input_dir", str(inputs), "--output_dir", str(tmp_path / "out"),
        "--ckpt_path", str(setup["model"]), "--organ", PROMPTS["organ"], "--object_type", PROMPTS["object_type"],
        "--device", "$torch.device('cpu')", "--keep_largest_component", "false", "--fill_holes", "false",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "out" / image.name)))


def test_sync_training_for_one_epoch_changes_the_weights_the_next_infer_uses(server, setup, trained):
    image = setup["heads"][0].stem
    _, old = server.infer(image)
    assert old["weights"] == file_digest(setup["model"])
    state = server.train(mode="sync", max_epochs=1)
    assert state["status"] == "DONE", state
    new_weights = file_digest(setup["model"])
    assert new_weights != old["weights"]
    _, new = server.infer(image)
    assert new["weights"] == new_weights
    assert server.info()["train_stats"][MODEL]["mode"] == "sync"


def test_the_server_writes_into_the_app_folder_only_monai_labels_own_folders(trained, setup):
    assert app_files() == setup["app_files"]
    assert (setup["model"].parent / "model.label_train.json").is_file()


def test_eight_concurrent_infers_all_succeed_with_identical_masks(server, setup):
    image = setup["heads"][1].stem
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: server.infer(image), range(8)))
    assert all(isinstance(mask, np.ndarray) for mask, _ in results), results
    for mask, result in results[1:]:
        np.testing.assert_array_equal(mask, results[0][0])
        assert result["probabilities"] == results[0][1]["probabilities"]


def test_sigterm_during_training_stops_the_server_and_the_training_run(server):
    """The module's last test: it stops the shared server the way a user's Ctrl-C or SIGTERM does."""
    body = json.dumps({"mode": "full", "max_epochs": 1000}).encode()
    assert server.call("POST", f"/train/{MODEL}", body, "application/json")[0] == 200
    session = server.process.pid
    deadline = time.monotonic() + READY_TIMEOUT
    while not any("-m train" in command_line(pid) for pid in session_processes(session)):
        assert time.monotonic() < deadline, "the training subprocess never started"
        time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [command_line(pid) for pid in session_processes(session)] == []
