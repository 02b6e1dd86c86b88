"""bundle.label.inference: one image through configs/inference.yaml, as the Label server runs it.

In-process, on a small network (a real untrained checkpoint written by the test) and real demo
images; the HTTP side is in test_label_server.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bundle.label.inference import BundleInference, RequestError

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADS = REPO_ROOT / "data" / "demo" / "segmentation" / "Fetal_HC" / "imgs"
SMALL_NET = {
    "image_size": 64,
    "network_def#embed_dim": 12,
    "network_def#encoder_depths": [1, 1],
    "network_def#decoder_depths": [1, 1],
    "network_def#num_heads": [1, 2],
}
OVERRIDES = {"bundle_root": str(REPO_ROOT), "device": "$torch.device('cpu')"}


def write_checkpoint(config_files: list[Path], path: Path, seed: int) -> None:
    """An untrained checkpoint of the configs' network whose prompt layers are strong enough to matter."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser["bundle_root"] = str(REPO_ROOT)
    torch.manual_seed(seed)
    state = parser.get_parsed_content("network_def").state_dict()
    torch.save({k: v * 50 if ".prompt_proj." in k else v for k, v in state.items()}, path)


@pytest.fixture(scope="module")
def config_files(tmp_path_factory) -> list[Path]:
    small = tmp_path_factory.mktemp("configs") / "small_net.yaml"
    small.write_text(yaml.safe_dump(SMALL_NET))
    return [REPO_ROOT / "configs" / "inference.yaml", REPO_ROOT / "configs" / "cpu.yaml", small]


@pytest.fixture(scope="module")
def inference(config_files, tmp_path_factory) -> BundleInference:
    model = tmp_path_factory.mktemp("model") / "model.pt"
    write_checkpoint(config_files, model, seed=0)
    return BundleInference(config_files, model, overrides=OVERRIDES, defaults={"organ": "head", "object_type": "organ"})


def dicom_of(png: Path, path: Path) -> Path:
    """The PNG's pixels as a minimal secondary-capture DICOM file."""
    pixels = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "US", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_predict_writes_a_mask_of_the_image_size_and_probabilities_by_class_name(inference, tmp_path, kind):
    png = sorted(HEADS.glob("*.png"))[0]
    image = png if kind == "png" else dicom_of(png, tmp_path / f"{png.stem}.dcm")
    prediction = inference.predict(image, {}, tmp_path / "work")
    mask = np.asarray(Image.open(prediction.mask))
    assert mask.shape == np.asarray(Image.open(png)).shape
    assert set(np.unique(mask)) <= {0, 255}
    assert prediction.foreground_pixels == int((mask > 0).sum())
    assert list(prediction.probabilities) == ["benign", "malignant"]
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.prompts == {"organ": "head", "object_type": "organ", "mode": "whole"}


def test_request_prompts_override_the_defaults_and_change_the_output(inference, tmp_path):
    image = sorted(HEADS.glob("*.png"))[0]
    head = inference.predict(image, {}, tmp_path / "a")
    breast = inference.predict(image, {"organ": "breast", "object_type": "tumor"}, tmp_path / "b")
    assert breast.prompts == {"organ": "breast", "object_type": "tumor", "mode": "whole"}
    assert head.probabilities != breast.probabilities


@pytest.mark.parametrize(
    "params, allowed",
    [({"organ": "spleen"}, "'breast'"), ({"object_type": "bone"}, "'tumor'"), ({"mode": "zoomed"}, "'location'")],
    ids=["organ", "object_type", "mode"],
)
def test_an_unknown_prompt_name_is_a_422_listing_the_allowed_names(inference, tmp_path, params, allowed):
    with pytest.raises(RequestError, match=f"unknown {next(iter(params))} '{next(iter(params.values()))}'.*{allowed}") as err:
        inference.predict(sorted(HEADS.glob("*.png"))[0], params, tmp_path)
    assert err.value.status == 422


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nnot really"], ids=["empty", "truncated"])
def test_an_unreadable_image_is_a_422_naming_the_file(inference, tmp_path, content):
    broken = tmp_path / "broken.png"
    broken.write_bytes(content)
    with pytest.raises(RequestError, match="cannot read image broken.png") as err:
        inference.predict(broken, {}, tmp_path / "work")
    assert err.value.status == 422


def test_a_default_prompt_outside_the_vocabulary_fails_at_start(config_files, tmp_path):
    model = tmp_path / "model.pt"
    write_checkpoint(config_files, model, seed=0)
    with pytest.raises(RequestError, match="unknown organ 'spleen'"):
        BundleInference(config_files, model, overrides=OVERRIDES, defaults={"organ": "spleen"})


def test_a_replaced_checkpoint_is_served_by_the_next_request(config_files, tmp_path):
    model = tmp_path / "model.pt"
    write_checkpoint(config_files, model, seed=0)
    inference = BundleInference(config_files, model, overrides=OVERRIDES)
    image = sorted(HEADS.glob("*.png"))[0]
    first = inference.predict(image, {}, tmp_path / "a")
    write_checkpoint(config_files, tmp_path / "new.pt", seed=1)
    os.replace(tmp_path / "new.pt", model)
    second = inference.predict(image, {}, tmp_path / "b")
    assert second.weights != first.weights
    assert second.probabilities != first.probabilities
