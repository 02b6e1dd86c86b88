"""Rehearsal: while a checkpoint adapts to new data, a share of every batch replays the datasets it
was trained on, so that the old organs are not forgotten.

Config use (``configs/pretrain.yaml``)::

    train#rehearsal: "$bundle.data.rehearsal_samples(@rehearsal_registry_file)"
    train#registry: "$bundle.data.with_rehearsal(@registry, @rehearsal_registry_file)"
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bundle.data.load import load_samples
from bundle.flags import is_unset
from bundle.data.registry import DatasetRegistry, load_registry

__all__ = ["REHEARSAL_KEY", "rehearsal_samples", "with_rehearsal"]

# a sample's tag: 1 for a replayed sample of an old dataset
REHEARSAL_KEY = "rehearsal"


def rehearsal_samples(registry_file: str | Path | None, split: str = "train") -> list[dict]:
    """The ``split`` samples of every dataset of the old registry, tagged ``rehearsal: 1``; [] without one."""
    if is_unset(registry_file):
        return []
    samples = load_samples(load_registry(registry_file), split)
    if not samples:
        raise ValueError(f"rehearsal registry {registry_file} has no '{split}' samples to replay")
    return [{**sample, REHEARSAL_KEY: 1} for sample in samples]


def with_rehearsal(registry: DatasetRegistry, registry_file: str | Path | None) -> DatasetRegistry:
    """``registry`` with the old registry's datasets added, so that the transforms read both kinds of sample.

    The vocabulary stays ``registry``'s (the adapted checkpoint's).

    Raises:
        ValueError: an old dataset's organ is not in that vocabulary, or an old dataset has the name
            and task of a new one (their samples could not be told apart).
    """
    if is_unset(registry_file):
        return registry
    old = load_registry(registry_file)
    new_keys = {spec.key for spec in registry.datasets}
    for spec in old.datasets:
        if spec.key in new_keys:
            raise ValueError(
                f"rehearsal registry {old.source} declares '{spec.name}' ({spec.task}), as registry {registry.source} "
                "does: rename one of them"
            )
        if spec.organ not in registry.vocabulary.organs:
            raise ValueError(
                f"rehearsal dataset '{spec.name}' of {old.source} has organ '{spec.organ}', which the model does not "
                f"know: {list(registry.vocabulary.organs)}"
            )
    return dataclasses.replace(registry, datasets=registry.datasets + old.datasets)
