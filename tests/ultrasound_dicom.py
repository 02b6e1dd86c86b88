"""Real DICOM files of the kinds ultrasound machines write, for the loader and inference tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# photometric interpretation -> samples per pixel
PHOTOMETRICS = {"MONOCHROME2": 1, "RGB": 3, "YBR_FULL": 3}


def rgb_to_ybr_full(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB (H, W, 3) -> YBR_FULL (ITU-R BT.601, full range), as PS3.3 C.7.6.3.1.2 defines it."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str | None = None, frames: int = 0) -> Path:
    """An Ultrasound Image Storage file of ``pixels``: (H, W) uint8 / uint16 gray or (H, W, 3) uint8 RGB;
    with ``frames`` T > 0, a cine loop (Ultrasound Multi-frame Image Storage) of (T, H, W) gray pixels.

    ``photometric="YBR_FULL"`` stores RGB pixels converted to YBR, as many scanners do.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, generate_uid

    if frames:
        assert pixels.shape[0] == frames and pixels.ndim == 3, "a cine loop is (T, H, W) gray"
    photometric = photometric or ("MONOCHROME2" if pixels.ndim == 2 or frames else "RGB")
    stored = rgb_to_ybr_full(pixels) if photometric == "YBR_FULL" else pixels
    bits = 16 if pixels.dtype == np.uint16 else 8
    meta = FileMetaDataset()
    storage = UltrasoundMultiFrameImageStorage if frames else UltrasoundImageStorage
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = storage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID = meta, meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, (ds.Rows, ds.Columns) = "US", pixels.shape[1:3] if frames else pixels.shape[:2]
    if frames:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.SamplesPerPixel = PHOTOMETRICS[photometric]
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
