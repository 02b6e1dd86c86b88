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
from label_support import REPO_ROOT, small_net_overrides, write_checkpoint
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bundle.label.inference import BundleInference, RequestError

HEADS = REPO_ROOT / "data" / "demo" / "segmentation" / "Fetal_HC" / "imgs"
OVERRIDES = {"bundle_root": str(REPO_ROOT), "device": "$torch.device('cpu')"}
# strong prompt layers, so that prompts visibly change an untrained network's output
PROMPT_SCALE = 50.0


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[Path]:
    return small_net_overrides(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def config_files(overrides) -> list[Path]:
    return [REPO_ROOT / "configs" / "inference.yaml", *overrides]


def checkpoint(overrides: list[Path], path: Path, seed: int = 0) -> Path:
    return write_checkpoint(overrides, path, seed, prompt_scale=PROMPT_SCALE)


@pytest.fixture(scope="module")
def inference(config_files, overrides, tmp_path_factory) -> BundleInference:
    model = checkpoint(overrides, tmp_path_factory.mktemp("model") / "model.pt")
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


def test_a_default_prompt_outside_the_vocabulary_fails_at_start(config_files, overrides, tmp_path):
    model = checkpoint(overrides, tmp_path / "model.pt")
    with pytest.raises(RequestError, match="unknown organ 'spleen'"):
        BundleInference(config_files, model, overrides=OVERRIDES, defaults={"organ": "spleen"})


def test_a_replaced_checkpoint_is_served_by_the_next_request(config_files, overrides, tmp_path):
    model = checkpoint(overrides, tmp_path / "model.pt")
    inference = BundleInference(config_files, model, overrides=OVERRIDES)
    image = sorted(HEADS.glob("*.png"))[0]
    first = inference.predict(image, {}, tmp_path / "a")
    checkpoint(overrides, tmp_path / "new.pt", seed=1)
    os.replace(tmp_path / "new.pt", model)
    second = inference.predict(image, {}, tmp_path / "b")
    assert second.weights != first.weights
    assert second.probabilities != first.probabilities
