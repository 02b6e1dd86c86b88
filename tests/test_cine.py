"""Cine loops through the bare inference command: a 3-D NIfTI (H, W, T), a multi-frame DICOM and a video
become a mask volume of the input's shape and affine, an overlay video and a CSV row per frame; a frame
or a video that cannot be read is named and skipped, the others kept."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bundle.data.cine import STILL, cine_frame_count, expand_cine, video_file
from tests.bundle_runner import DEMO_DIR, bare_inference
from tests.conftest import write_checkpoint
from tests.ultrasound_dicom import write_dicom

FRAMES = 6
AFFINE = np.diag([0.5, 0.4, 1.0, 1.0])


@pytest.fixture(scope="module")
def loop() -> np.ndarray:
    """A (H, W, T) uint8 loop: a demo thyroid frame sliding sideways."""
    source = sorted((DEMO_DIR / "segmentation" / "TG3K" / "imgs").glob("*.png"))[0]
    gray = np.array(Image.open(source).convert("L"))[:, :200]  # not square: i and j cannot be swapped unseen
    return np.stack([np.roll(gray, 4 * t, axis=1) for t in range(FRAMES)], -1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


def rows(folder) -> list[dict]:
    return list(csv.DictReader(open(folder / "predictions.csv")))


def test_a_nifti_loop_gives_a_mask_volume_whose_voxels_label_the_input_voxels(tmp_path, loop, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(loop, AFFINE), inputs / "scan.nii.gz")
    nib.save(nib.Nifti1Image(loop[..., 3], AFFINE), inputs / "frame3.nii.gz")  # frame 3 alone, as a 2D image
    log = bare_inference(inputs, tmp_path / "out", checkpoint, "thyroid", "organ")
    volume = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert volume.shape == loop.shape and np.allclose(volume.affine, AFFINE)
    masks = np.asarray(volume.dataobj)
    assert set(np.unique(masks)) <= {0, 255}
    assert np.array_equal(masks[..., 3], np.asarray(nib.load(tmp_path / "out" / "frame3.nii.gz").dataobj))
    table = rows(tmp_path / "out")
    loop_rows = [row for row in table if row["file"] == "scan.nii.gz"]
    assert [int(row["frame"]) for row in loop_rows] == list(range(FRAMES))
    assert [int(row["foreground_pixels"]) for row in loop_rows] == [int((masks[..., t] > 0).sum()) for t in range(FRAMES)]
    assert [row["frame"] for row in table if row["file"] == "frame3.nii.gz"] == [""]
    assert len(video_file(tmp_path / "out" / "scan_overlay.mp4")) == FRAMES
    assert "frames/s" in log


def test_a_multiframe_dicom_loop_is_read_frame_by_frame(tmp_path, loop, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_dicom(inputs / "cine.dcm", np.moveaxis(loop, -1, 0).copy(), frames=FRAMES)
    assert cine_frame_count(inputs / "cine.dcm") == FRAMES
    bare_inference(inputs, tmp_path / "out", checkpoint, "thyroid", "organ")
    assert nib.load(tmp_path / "out" / "cine.nii.gz").shape == loop.shape
    assert len(rows(tmp_path / "out")) == FRAMES


@pytest.mark.parametrize("suffix, codec", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_a_video_is_read_frame_by_frame_and_a_broken_one_is_named_and_skipped(tmp_path, loop, checkpoint, suffix, codec):
    cv2 = pytest.importorskip("cv2")
    inputs = tmp_path / "in"
    inputs.mkdir()
    height, width, _ = loop.shape
    writer = cv2.VideoWriter(str(inputs / f"clip{suffix}"), cv2.VideoWriter_fourcc(*codec), 25, (width, height))
    for t in range(FRAMES):
        writer.write(np.repeat(loop[..., t, None], 3, axis=2))
    writer.release()
    (inputs / f"broken{suffix}").write_bytes(b"not a video")
    log = bare_inference(inputs, tmp_path / "out", checkpoint, "thyroid", "organ")
    assert f"skipping {inputs / f'broken{suffix}'}: cannot read video" in log
    assert nib.load(tmp_path / "out" / "clip.nii.gz").shape == loop.shape
    assert [int(row["frame"]) for row in rows(tmp_path / "out")] == list(range(FRAMES))
    assert len(video_file(tmp_path / "out" / "clip_overlay.mp4")) == FRAMES


def test_a_corrupt_frame_is_named_and_skipped_and_the_other_frames_are_kept(tmp_path, loop, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(loop, AFFINE), inputs / "cut.nii")
    data = (inputs / "cut.nii").read_bytes()
    (inputs / "cut.nii").write_bytes(data[: len(data) - 10])  # the last frame is cut short
    shutil.copy(sorted((DEMO_DIR / "segmentation" / "TG3K" / "imgs").glob("*.png"))[1], inputs / "still.png")
    log = bare_inference(inputs, tmp_path / "out", checkpoint, "thyroid", "organ")
    assert f"cannot read frame {FRAMES - 1} of {inputs / 'cut.nii'}" in log
    table = rows(tmp_path / "out")
    assert [int(row["frame"]) for row in table if row["file"] == "cut.nii"] == list(range(FRAMES - 1))
    assert (tmp_path / "out" / "still.png").is_file()
    masks = np.asarray(nib.load(tmp_path / "out" / "cut.nii.gz").dataobj)
    assert masks.shape == loop.shape and not masks[..., FRAMES - 1].any()


def test_still_images_and_channel_last_niftis_are_not_loops(tmp_path, loop):
    nib.save(nib.Nifti1Image(loop[..., :3], AFFINE), tmp_path / "rgb.nii.gz")  # (H, W, 3): channels
    samples = expand_cine([{"image": str(tmp_path / "rgb.nii.gz")}])
    assert samples == [{"image": str(tmp_path / "rgb.nii.gz"), "frame": STILL, "frames": 0}]
