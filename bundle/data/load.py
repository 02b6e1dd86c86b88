"""The one entry point configs call for a split's samples, whatever the data source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bundle.data.datalist import datalist_samples
from bundle.data.m2us import m2us_samples
from bundle.data.registry import DatasetRegistry, as_registry


def load_samples(
    registry: DatasetRegistry | str | Path, split: str, datalist: str | Path | Sequence[str | Path] | None = None
) -> list[dict]:
    """Samples of ``split`` from a MONAI datalist JSON if given, else from the registry's M²-US folders.

    Args:
        registry: the dataset registry (object or YAML path).
        split: ``"train"``, ``"val"``, ``"test"`` (or another list / datalist name).
        datalist: optional MONAI datalist JSON, or a list of them (their samples in that order);
            the entries name datasets declared in ``registry``.

    Returns:
        sample dicts (see ``bundle.data.samples``); both sources give identical dicts.
    """
    registry = as_registry(registry)
    if datalist is None:
        return m2us_samples(registry, split)
    files = [datalist] if isinstance(datalist, (str, Path)) else list(datalist)
    return [sample for path in files for sample in datalist_samples(path, split, registry)]
