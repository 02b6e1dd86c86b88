"""The unlabelled image pool of self-supervised pretraining: every image under a list of folders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bundle.data.files import folder_samples

__all__ = ["unlabelled_samples"]


def unlabelled_samples(folders: Sequence[str | Path | Mapping[str, str]] | str | Path) -> list[dict]:
    """``[{"image": path}, ...]`` for every supported image under each folder (any depth).

    A file found under two of the folders is listed once. Config use:
    ``"$bundle.data.unlabelled.unlabelled_samples(@unlabelled_dirs)"``.

    Args:
        folders: the folders (one folder alone may be given as a string); an entry may also be
            ``{dir: PATH, ...}``, the form pretrain.yaml's consistency option takes (its
            prompt names are not needed here), so one value serves both stages.

    Raises:
        ValueError: no folder given, or a folder holds no image file (naming it).
        FileNotFoundError: a folder does not exist (naming it).
    """
    if isinstance(folders, (str, Path)):
        folders = [folders]
    if not folders:
        raise ValueError("unlabelled_dirs is empty: give the image folders, e.g. --unlabelled_dirs \"['DIR']\"")
    images = {}
    for folder in folders:
        if isinstance(folder, Mapping):
            folder = folder["dir"]
        for sample in folder_samples(folder):
            images.setdefault(sample["image"], sample)
    return list(images.values())
