"""Loading every supported file type to [0, 1] 3-channel samples, and bad files stopping with the file named."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bundle.data import load_registry, m2us_samples
from bundle.transforms import LoadUltrasoundd, inference_transforms, to_unit_range, verify_samples
from tests.ultrasound_dicom import write_dicom
from tests.conftest import DEMO_DIR

GRAY = (np.arange(24 * 36).reshape(24, 36) % 251).astype(np.uint8)  # rows differ from columns: orientation
RGB = np.stack([GRAY, GRAY // 2, 255 - GRAY], axis=-1)


def _writers():
    return {
        "gray.png": lambda p: Image.fromarray(GRAY).save(p),
        "rgb.png": lambda p: Image.fromarray(RGB).save(p),
        "rgba.png": lambda p: Image.fromarray(RGB).convert("RGBA").save(p),
        "gray_alpha.png": lambda p: Image.fromarray(GRAY).convert("LA").save(p),
        "gray16.png": lambda p: Image.fromarray(GRAY.astype(np.uint16) * 200).save(p),
        "gray.bmp": lambda p: Image.fromarray(GRAY).save(p),
        "rgb.tif": lambda p: Image.fromarray(RGB).save(p),
        "gray.dcm": lambda p: write_dicom(p, GRAY),
        "gray16.dcm": lambda p: write_dicom(p, GRAY.astype(np.uint16) * 200),
        "rgb.dcm": lambda p: write_dicom(p, RGB),
        "ybr.dcm": lambda p: write_dicom(p, RGB, "YBR_FULL"),
        "gray.nii.gz": lambda p: nib.save(nib.Nifti1Image(GRAY.astype(np.float32) * 3 - 100, np.eye(4)), p),
        "gray_slice.nii": lambda p: nib.save(nib.Nifti1Image(GRAY[..., None], np.eye(4)), p),
    }


@pytest.mark.parametrize("name", list(_writers()))
def test_every_file_type_loads_as_unit_range_image_rows_first(tmp_path, name):
    path = tmp_path / name
    _writers()[name](path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = LoadUltrasoundd(("image",))({"image": str(path)})["image"]
    colour = name.startswith(("rgb", "ybr"))
    assert image.shape == ((3 if colour else 1), 24, 36) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    expected = torch.from_numpy(GRAY).float()
    expected = (expected - expected.min()) / (expected.max() - expected.min())  # min-max: 16-bit, NIfTI float
    if name.endswith(("png", "bmp", "tif", "dcm", "gray_slice.nii")) and "16" not in name:
        expected = torch.from_numpy(GRAY).float() / 255  # 8-bit: official / 255
    # YBR is stored rounded to 8 bits, and converted back to RGB on reading: within 2 / 255
    tolerance = 2 / 255 if name.startswith("ybr") else 1e-6
    assert torch.allclose(image[0], expected, atol=tolerance)
    if colour:
        assert torch.allclose(image[2], 1 - torch.from_numpy(GRAY).float() / 255, atol=tolerance)
    assert image.meta["spatial_shape"] == (24, 36) and image.meta["original_channel_dim"] == 0


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "gray.dcm", "gray.nii.gz"])
def test_inference_chain_gives_three_channels_for_any_type(tmp_path, name):
    path = tmp_path / name
    _writers()[name](path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = inference_transforms(32, organ="thyroid", object_type="organ")({"image": str(path)})
    assert out["image"].shape == (3, 32, 32)
    assert torch.equal(out["image"][0], out["image"][1]) == (name != "rgba.png")


def test_constant_image_scales_to_zeros():
    assert torch.equal(to_unit_range(torch.full((1, 4, 4), 7.0)), torch.zeros(1, 4, 4))


@pytest.fixture()
def broken_copy(tmp_path: Path):
    """A registry over a copy of the demo TG3K dataset, and its first validation sample's files."""
    root = tmp_path / "segmentation" / "TG3K"
    shutil.copytree(DEMO_DIR / "segmentation" / "TG3K", root)
    (tmp_path / "datasets.yaml").write_text(
        "datasets:\n- {name: TG3K, task: segmentation, organ: thyroid, object_type: organ, root: segmentation/TG3K}\n"
    )
    registry = load_registry(tmp_path / "datasets.yaml")
    samples = m2us_samples(registry, "val")
    return registry, samples, Path(samples[0]["image"]), Path(samples[0]["label"])


def test_demo_data_verifies_clean(broken_copy):
    registry, samples, _, _ = broken_copy
    assert verify_samples(samples, registry) == samples


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_named(broken_copy, damage):
    registry, samples, image, _ = broken_copy
    data = image.read_bytes()
    broken = {"garbage": b"\x89PNG\r\n\x1a\n not a png", "truncated": data[: len(data) // 2], "empty": b""}
    image.write_bytes(broken[damage])
    with pytest.raises(ValueError, match=f"cannot read image file {image}"):
        verify_samples(samples, registry)


def test_mask_of_another_size_is_named(broken_copy):
    registry, samples, image, label = broken_copy
    Image.open(label).resize((100, 80), Image.Resampling.NEAREST).save(label)
    message = rf"label file {label} is \(80, 100\) \(H, W\) but its image {image} is \(256, 256\)"
    with pytest.raises(ValueError, match=message):
        verify_samples(samples, registry)


def test_undeclared_mask_value_is_named(broken_copy):
    registry, samples, _, label = broken_copy
    mask = np.asarray(Image.open(label)).copy()
    mask[:3, :3] = 128
    Image.fromarray(mask).save(label)
    message = rf"label file {label} has mask values \[128\] that dataset 'TG3K' does not declare"
    with pytest.raises(ValueError, match=message):
        verify_samples(samples, registry)


def test_colour_mask_with_different_channels_is_named(broken_copy):
    registry, samples, _, label = broken_copy
    mask = np.asarray(Image.open(label))
    Image.fromarray(np.stack([mask, mask, 255 - mask], axis=-1)).save(label)
    with pytest.raises(ValueError, match=f"label file {label}: a colour mask must have equal channels"):
        verify_samples(samples, registry)


def test_unsupported_type_and_volume_are_named(tmp_path):
    gif = tmp_path / "a.gif"
    Image.fromarray(GRAY).save(gif)
    with pytest.raises(ValueError, match=f"unsupported image file type: {gif}"):
        LoadUltrasoundd(("image",))({"image": str(gif)})
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), volume)
    with pytest.raises(ValueError, match=f"{volume}: expected a 2D image"):
        LoadUltrasoundd(("image",))({"image": str(volume)})


def test_missing_file_at_load_time_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image file not found: {tmp_path / 'gone.png'}"):
        LoadUltrasoundd(("image",))({"image": str(tmp_path / "gone.png")})
