"""Datasets declared in a registry YAML, read from M²-US folders or MONAI datalists, and sampled by dataset.

Config one-liners::

    registry: "$bundle.data.load_registry(@dataset_dir + '/datasets.yaml')"
    train#datalist: "$bundle.data.load_samples(@registry, 'train')"        # or (..., datalist=PATH)
    train#sampler: "$bundle.data.weighted_sampler(@train#datalist, seed=0)"
    inference datalist: "$bundle.data.folder_samples(@input_dir)"
"""

from bundle.data.datalist import datalist_samples, write_datalist
from bundle.data.files import IMAGE_SUFFIXES, folder_samples
from bundle.data.load import load_samples
from bundle.data.m2us import m2us_samples
from bundle.data.registry import DatasetRegistry, DatasetSpec, load_registry, read_official_config
from bundle.data.sampler import (
    DatasetWeightedSampler,
    MixedShareSampler,
    dataset_weights,
    labelled_weights,
    training_sampler,
    weighted_sampler,
)
from bundle.data.rehearsal import rehearsal_samples, with_rehearsal
from bundle.data.samples import SPLITS
from bundle.data.split import split_ids

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "DatasetRegistry",
    "DatasetSpec",
    "DatasetWeightedSampler",
    "MixedShareSampler",
    "datalist_samples",
    "dataset_weights",
    "folder_samples",
    "labelled_weights",
    "load_registry",
    "load_samples",
    "m2us_samples",
    "read_official_config",
    "rehearsal_samples",
    "split_ids",
    "training_sampler",
    "weighted_sampler",
    "with_rehearsal",
    "write_datalist",
]
