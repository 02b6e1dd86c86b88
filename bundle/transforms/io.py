"""Loading 2D ultrasound files (PNG/JPG/BMP/TIFF, DICOM, NIfTI) as channel-first MetaTensors.

Arrays are taken as stored, first axis = image rows: PIL without MONAI's default axis swap,
DICOM ``pixel_array`` (rows, columns) without ``swap_ij``, NIfTI data as stored. A file read
and written back by the bundle therefore keeps its orientation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage, MapTransform, Transform

from bundle.data.cine import STILL, read_frame
from bundle.data.files import DICOM_SUFFIXES, IMAGE_SUFFIXES, NATURAL_SUFFIXES, NIFTI_SUFFIXES



def reader_for(path: str | Path) -> ImageReader:
    """The MONAI reader for ``path`` by its suffix; a ValueError lists the supported ones."""
    name = str(path).lower()
    if name.endswith(NATURAL_SUFFIXES):
        return PILReader(reverse_indexing=False)
    if name.endswith(DICOM_SUFFIXES):
        return PydicomReader(swap_ij=False)
    if name.endswith(NIFTI_SUFFIXES):
        return NibabelReader()
    raise ValueError(f"unsupported image file type: {path} (supported: {', '.join(IMAGE_SUFFIXES)})")


class LoadImage2D(Transform):
    """Read one 2D image file into a (C, H, W) MetaTensor of its stored dtype.

    Gray images get one channel; RGB(A) images keep theirs. A third axis of length 1, 3 or 4
    that the reader does not mark as channels (DICOM RGB, NIfTI ``(H, W, 1)``) is taken as the
    channel axis. Anything else (a 3D volume, a multi-frame DICOM) is refused with the file named.
    """

    def __init__(self) -> None:
        # one registered reader: by default LoadImage instantiates every installed reader
        self.loader = LoadImage(PILReader(reverse_indexing=False), image_only=True, dtype=None)

    def __call__(self, path: str | Path, frame: int = STILL) -> MetaTensor:
        """(C, H, W) of the image at ``path``, or of frame ``frame`` (>= 0) of the cine loop there."""
        reader = reader_for(path) if frame < 0 else None
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        if frame >= 0:
            image = MetaTensor(torch.as_tensor(read_frame(path, frame)), meta={"filename_or_obj": str(path)})
        else:
            try:
                image = self.loader(str(path), reader=reader)
            except Exception as err:  # any reader failure means the file cannot be used
                raise ValueError(f"cannot read image file {path}: {type(err).__name__}: {err}") from err
        channel_dim = image.meta.get("original_channel_dim")
        if image.ndim == 2:
            image = image[None]
        elif image.ndim == 3 and isinstance(channel_dim, int):  # readers say "no_channel" or NaN otherwise
            image = image.movedim(channel_dim, 0)
        elif image.ndim == 3 and image.shape[-1] in (1, 3, 4):  # DICOM RGB and NIfTI (H, W, 1) say NaN
            image = image.movedim(-1, 0)
        else:
            raise ValueError(f"{path}: expected a 2D image (H, W[, C]), got array shape {tuple(image.shape)}")
        if min(image.shape[1:]) < 2:
            raise ValueError(f"{path}: expected a 2D image (H, W[, C]), got array shape {tuple(image.shape)}")
        return _two_d_meta(image, frame)


def _two_d_meta(image: MetaTensor, frame: int = STILL) -> MetaTensor:
    """Metadata that says the same of every 2D image, whatever its file type and channels.

    Readers describe an RGB DICOM as (H, W, 3) and a gray one as (H, W); such lists of other
    lengths cannot be collated, so one batch of mixed files would fail. Only what the inverse
    transforms and the writers use is kept, in one form: a (C, H, W) image of spatial shape (H, W),
    and ``frame``, its index in a cine loop (``STILL`` for a still image).
    """
    meta = image.meta
    spacing = meta.get("spacing")
    image.meta = {
        "filename_or_obj": meta.get("filename_or_obj"),
        "affine": meta.get("affine"),
        "original_affine": meta.get("original_affine", meta.get("affine")),
        "space": meta.get("space", "RAS"),
        "spatial_shape": tuple(image.shape[1:]),
        "original_channel_dim": 0,
        "spacing": tuple(float(s) for s in spacing[:2]) if spacing is not None else (1.0, 1.0),
        "frame": int(frame),
    }
    return image


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Float32 intensities in [0, 1]: 8-bit / 255 (official), anything else per-image min-max.

    Min-max because 16-bit PNG, DICOM and NIfTI files use any part of their range (12-bit
    data in 16-bit words, signed or float values).
    """
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    image = image.float()
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else torch.zeros_like(image)


class LoadUltrasoundd(MapTransform):
    """Load the sample's image and masks.

    ``image`` becomes float32 (C, H, W) in [0, 1] with C = 1 (gray) or 3 (colour; alpha
    dropped); other keys (masks) keep their stored integer values with one channel (a colour
    mask must have equal channels). Missing keys are skipped (a classification sample has no
    ``label``; only some have a ``mask``).

    Args:
        keys: the image key followed by mask keys.
    """

    def __init__(self, keys: KeysCollection = ("image", "label", "mask")) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key = self.keys[0]
        self.read = LoadImage2D()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            frame = int(d.get("frame", STILL)) if key == self.image_key else STILL
            array = self.read(d[key], frame)
            if key == self.image_key:
                array.meta["frames"] = int(d.get("frames", 0))  # the loop's length, for the writer
            d[key] = self._image(array) if key == self.image_key else self._mask(array, d[key], key)
        return d

    @staticmethod
    def _image(array: MetaTensor) -> MetaTensor:
        if array.shape[0] in (2, 4):  # gray + alpha, RGB + alpha
            array = array[: array.shape[0] - 1]
        if array.shape[0] not in (1, 3):
            raise ValueError(
                f"{array.meta.get('filename_or_obj')}: expected 1 (gray) or 3 (RGB) channels, got {array.shape[0]}"
            )
        return to_unit_range(array)

    @staticmethod
    def _mask(array: MetaTensor, path: object, key: Hashable) -> MetaTensor:
        if array.is_floating_point() and not torch.equal(array, array.round()):
            raise ValueError(f"{key} file {path}: mask values must be integers")
        if array.shape[0] > 1:
            if not bool((array == array[:1]).all()):
                raise ValueError(f"{key} file {path}: a colour mask must have equal channels (got {array.shape[0]})")
            array = array[:1]
        return array


def file_of(value: object) -> str:
    """The file a sample value names or was loaded from (for error messages)."""
    meta = getattr(value, "meta", None)
    if meta is not None:
        return str(meta.get("filename_or_obj", "<unknown file>"))
    return str(value) if isinstance(value, (str, Path)) else "<in-memory array>"


def channels_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """(1 or 3, H, W) -> float32 (3, H, W), a gray channel repeated.

    Spatial transforms run before this on the single gray channel: a third of the work.
    """
    return (image.repeat(3, 1, 1) if image.shape[0] == 1 else image).float()

