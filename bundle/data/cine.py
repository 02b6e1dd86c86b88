"""Cine loops: a 3-D NIfTI (H, W, T), a multi-frame DICOM or a video file, read one 2D frame at a time.

Inference expands such a file into one sample per frame (``frame`` its index, ``frames`` the
loop's length); :class:`bundle.transforms.io.LoadImage2D` reads the frame, and
:class:`bundle.workflows.inference.PredictionWriter` puts the frames' masks back into a volume of
the input's shape whose voxel (i, j, t) labels input voxel (i, j, t). A still image has
``frame`` -1. A loop is decoded once and kept while its frames are read (an uncompressed NIfTI
as a memory map, not read whole): reading a gzipped NIfTI frame by frame would decompress the
file up to each frame again. Videos (``.mp4``, ``.avi``) are decoded by MONAI's
``VideoFileDataset`` (OpenCV: the bundle's ``[video]`` extra) as RGB frames.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from bundle.data.files import DICOM_SUFFIXES, NIFTI_SUFFIXES, VIDEO_SUFFIXES

__all__ = ["STILL", "cine_frame_count", "expand_cine", "read_frame", "video_file"]

# the ``frame`` of a still image
STILL = -1
# a NIfTI whose third axis is this long or shorter holds channels (gray + alpha, RGB, RGBA), not frames
_MAX_CHANNELS = 4


def video_file(path: str | Path, **options):
    """MONAI's ``VideoFileDataset`` of the video at ``path`` (frames (H, W, 3) RGB; ``options`` as it takes them).

    Raises:
        ValueError: naming the file, when OpenCV is not installed or the video does not open.
    """
    try:
        from monai.data.video_dataset import VideoFileDataset

        return VideoFileDataset(str(path), channel_dim=2, **options)
    except RuntimeError as err:
        hint = " (pip install opencv-python-headless, or the bundle's [video] extra)" if "OpenCV" in str(err) else ""
        raise ValueError(f"cannot read video {path}: {err}{hint}") from err


def cine_frame_count(path: str | Path) -> int:
    """The number of frames of a cine loop at ``path``; 0 for a still image or an image file that does not
    open (the image loader then names the problem). Every video is a loop, even of one frame.

    Raises:
        ValueError: a video that does not open (naming it, and OpenCV when it is missing).
    """
    name = str(path).lower()
    if name.endswith(VIDEO_SUFFIXES):
        return len(video_file(path))
    try:
        if name.endswith(NIFTI_SUFFIXES):
            shape = nib.load(str(path)).shape
            return shape[2] if len(shape) == 3 and shape[2] > _MAX_CHANNELS else 0
        if name.endswith(DICOM_SUFFIXES):
            frames = int(getattr(pydicom.dcmread(str(path), stop_before_pixels=True), "NumberOfFrames", 1) or 1)
            return frames if frames > 1 else 0
    except Exception:  # noqa: BLE001 - unreadable here means "not a loop we can expand"
        return 0
    return 0


@functools.lru_cache(maxsize=1)
def _whole_loop(path: str, modified: float) -> np.ndarray | None:
    """Every frame of the loop at ``path`` (last modified at ``modified``), frames first: (T, H, W[, C]);
    None when the file does not read whole (a damaged file, whose frames are then read one at a time).
    The last loop read is kept."""
    try:
        if path.lower().endswith(NIFTI_SUFFIXES):
            return np.moveaxis(np.asanyarray(nib.load(path).dataobj), 2, 0)
        if path.lower().endswith(VIDEO_SUFFIXES):
            video = video_file(path)
            return np.stack([video.get_frame() for _ in range(len(video))])  # in order: no seek per frame
        return pydicom.dcmread(path).pixel_array
    except Exception:  # noqa: BLE001 - read_frame then names the failure of each frame
        return None


def _one_frame(path: str, frame: int) -> np.ndarray:
    """Frame ``frame`` of a loop that does not read whole: a NIfTI frame sliced from the file's data
    object, a video frame sought and decoded, a DICOM decoded (which then names the damage)."""
    if path.lower().endswith(VIDEO_SUFFIXES):
        return np.asarray(video_file(path)[frame])
    if not path.lower().endswith(NIFTI_SUFFIXES):
        frames = pydicom.dcmread(path).pixel_array
        return np.asarray(frames[frame])
    data = nib.load(path).dataobj
    if not 0 <= frame < data.shape[2]:
        raise IndexError(f"the loop has {data.shape[2]} frames")
    return np.asarray(data[:, :, frame])


def read_frame(path: str | Path, frame: int) -> np.ndarray:
    """Frame ``frame`` of the cine loop at ``path``: (H, W) or (H, W, C), the stored dtype.

    Raises:
        ValueError: naming the file and the frame, when it cannot be read or is out of range.
    """
    try:
        frames = _whole_loop(str(path), Path(path).stat().st_mtime)
        if frames is None:
            return _one_frame(str(path), frame)
        if not 0 <= frame < frames.shape[0]:
            raise IndexError(f"the loop has {frames.shape[0]} frames")
        return np.asarray(frames[frame])
    except Exception as err:  # any reader failure means the frame cannot be used
        raise ValueError(f"cannot read frame {frame} of {path}: {type(err).__name__}: {err}") from err


def expand_cine(samples: Sequence[dict]) -> list[dict]:
    """Each cine loop as one sample per frame (``frame``, ``frames``); still images get ``frame`` -1, ``frames`` 0."""
    expanded = []
    for sample in samples:
        frames = cine_frame_count(sample["image"])
        if frames:
            expanded += [{**sample, "frame": t, "frames": frames} for t in range(frames)]
        else:
            expanded.append({**sample, "frame": STILL, "frames": 0})
    return expanded
