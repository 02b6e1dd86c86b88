"""benchmarks/cine_fps.py: the bare inference command on a loop of unseen frames, per-frame cost and memory."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest

from benchmarks import cine_fps
from tests.conftest import require_shared, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_loop_holds_unseen_thyroid_frames_in_source_order(tmp_path):
    pool = require_shared("unlabelled")
    frames = cine_fps.unseen_thyroid_frames(pool, 5)
    assert len(frames) == 5 and all(frame.parent.name == "tg3k" and frame.is_file() for frame in frames)
    volume = nib.load(cine_fps.write_loop(frames, tmp_path / "loop.nii.gz"))
    assert volume.shape[2] == 5 and volume.get_data_dtype() == "uint8"
    with pytest.raises(ValueError, match="fewer than"):
        cine_fps.unseen_thyroid_frames(pool, 10_000)


def test_per_frame_cost_is_the_difference_of_a_long_and_a_one_frame_run(tmp_path):
    """Which run is longer is not asserted: at 5 tiny frames the start-up's spread decides it."""
    pool = require_shared("unlabelled")
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    # 5 frames: a NIfTI with 4 or fewer along its third axis holds channels, not frames (bundle.data.cine)
    setting = f"tiny={checkpoint}:torch --keep_largest_component false"
    result = cine_fps.measure([setting], frames=5, repeats=1, threads=1, unlabelled_dir=pool)
    row = result["settings"]["tiny"]
    assert row["backend"] == "torch" and row["seconds_5"] > 0 and row["seconds_1"] > 0
    assert row["overrides"] == ["--keep_largest_component", "false"]
    assert row["ms_per_frame"] == pytest.approx(1000 * (row["seconds_5"] - row["seconds_1"]) / 4)
    assert row["peak_rss_mib"] > 100  # a python process with torch and MONAI
    assert row["engine_frames_per_second"] > 0  # the command's own log line
    assert "| tiny | torch --keep_largest_component false |" in cine_fps.table(result)


def test_a_setting_names_its_checkpoint_backend_and_config_overrides():
    assert cine_fps.parse_setting("s=m.pt") == ("s", Path("m.pt"), None, [])
    assert cine_fps.parse_setting("s=m.pt:onnxruntime --onnx_spinning true") == ("s", Path("m.pt"), "onnxruntime", ["--onnx_spinning", "true"])
    for wrong in ("no-checkpoint", "s=m.pt --onnx_spinning", "s=m.pt onnx_spinning true"):
        with pytest.raises(ValueError, match="NAME=CKPT"):
            cine_fps.parse_setting(wrong)


def test_a_loop_the_command_does_not_read_frame_by_frame_is_refused(tmp_path):
    """4 frames along the third axis are read as channels: one row, not a loop's four, so no timing."""
    pool = require_shared("unlabelled")
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    with pytest.raises(RuntimeError, match="wrote 1 rows for a loop of 4 frames"):
        cine_fps.measure([f"tiny={checkpoint}:torch"], frames=4, repeats=1, threads=1, unlabelled_dir=pool)
