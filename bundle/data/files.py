"""Image file types the bundle reads, and a user's folder of images as inference samples."""

from __future__ import annotations

from pathlib import Path

NATURAL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
IMAGE_SUFFIXES: tuple[str, ...] = NATURAL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES
# cine loops inference reads besides the images (bundle.data.cine; OpenCV decodes them)
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi")
INFERENCE_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES + VIDEO_SUFFIXES


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has a supported image suffix (case-insensitive)."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def stem_of(path: Path) -> str:
    """File name without its image or video suffix (``a.nii.gz`` -> ``a``)."""
    name = path.name
    for suffix in sorted(INFERENCE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def folder_samples(folder: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[dict]:
    """``[{"image": path}, ...]`` for every file with one of ``suffixes`` under ``folder`` (recursive,
    sorted); inference takes ``INFERENCE_SUFFIXES`` (videos too).

    Config use (inference): ``"$bundle.data.folder_samples(@input_dir)"``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes))
    if not images:
        raise ValueError(f"no image files ({', '.join(suffixes)}) under {folder}")
    return [{"image": str(path.resolve())} for path in images]
