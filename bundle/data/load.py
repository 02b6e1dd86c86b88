"""The one entry point configs call for a split's samples, whatever the data source."""

from __future__ import annotations

from pathlib import Path

from bundle.data.datalist import datalist_samples
from bundle.data.m2us import m2us_samples
from bundle.data.registry import DatasetRegistry, as_registry


def load_samples(
    registry: DatasetRegistry | str | Path, split: str, datalist: str | Path | None = None
) -> list[dict]:
    """Samples of ``split`` from a MONAI datalist JSON if given, else from the registry's M²-US folders.

    Args:
        registry: the dataset registry (object or YAML path).
        split: ``"train"``, ``"val"``, ``"test"`` (or another list / datalist name).
        datalist: optional MONAI datalist JSON; its entries name datasets declared in ``registry``.

    Returns:
        sample dicts (see ``bundle.data.samples``); both sources give identical dicts.
    """
    registry = as_registry(registry)
    return datalist_samples(datalist, split, registry) if datalist is not None else m2us_samples(registry, split)
