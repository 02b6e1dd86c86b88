"""Dataset-weighted sampling: 1/sqrt(n) per sample, DDP sharding, seeds, and reproducible batches."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism

from bundle.data import DatasetWeightedSampler, dataset_weights, load_registry, m2us_samples, weighted_sampler
from bundle.transforms import train_transforms
from tests.conftest import DEMO_DIR



@pytest.fixture(scope="module")
def train_samples():
    return m2us_samples(load_registry(DEMO_DIR / "datasets.yaml"), "train")


def _group(sample: dict) -> tuple[str, str]:
    return sample["task"], sample["dataset"]


def test_each_sample_weighs_one_over_sqrt_of_its_dataset_size(train_samples):
    sizes = Counter(_group(s) for s in train_samples)
    assert sizes == {("segmentation", "BUSI"): 70, ("segmentation", "Fetal_HC"): 42,
                     ("segmentation", "TG3K"): 68, ("classification", "BUSI"): 70}
    for sample, weight in zip(train_samples, dataset_weights(train_samples)):
        assert weight == pytest.approx(1 / math.sqrt(sizes[_group(sample)]))


def test_official_grouping_pools_datasets_of_one_organ(train_samples):
    weights = dataset_weights(train_samples, group_by="organ")
    for sample, weight in zip(train_samples, weights):
        assert weight == pytest.approx(1 / math.sqrt({"breast": 140, "head": 42, "thyroid": 68}[sample["organ"]]))
    with pytest.raises(ValueError, match="group_by must be one of"):
        dataset_weights(train_samples, group_by="colour")


def test_dataset_frequencies_over_10000_draws_match_the_weights(train_samples):
    sizes = Counter(_group(s) for s in train_samples)
    draws = list(weighted_sampler(train_samples, seed=1, num_samples=10_000))
    counts = Counter(_group(train_samples[i]) for i in draws)
    total = sum(math.sqrt(n) for n in sizes.values())
    for group, n in sizes.items():
        expected = n * (1 / math.sqrt(n)) / total  # n samples of weight 1/sqrt(n): share sqrt(n) / sum sqrt
        assert abs(counts[group] / 10_000 - expected) < 0.02, (group, counts[group], expected)  # ~4 sigma
    # within a dataset every sample is equally likely
    busi = Counter(i for i in draws if _group(train_samples[i]) == ("segmentation", "BUSI"))
    assert len(busi) == 70 and max(busi.values()) < 3 * min(busi.values())


def test_same_seed_and_epoch_replay_the_draws(train_samples):
    first, again = weighted_sampler(train_samples, seed=5), weighted_sampler(train_samples, seed=5)
    assert list(first) == list(again) and len(first) == len(train_samples)
    assert list(first) != list(weighted_sampler(train_samples, seed=6))
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    first.set_epoch(0)
    assert list(first) == epoch0


@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_split_one_global_draw_between_them(train_samples, replicas):
    weights = dataset_weights(train_samples)
    single = list(DatasetWeightedSampler(train_samples, weights, num_samples=300, seed=2, num_replicas=1, rank=0))
    shards = [
        list(DatasetWeightedSampler(train_samples, weights, num_samples=300, seed=2, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert all(len(shard) == 300 // replicas for shard in shards)
    interleaved = [shards[i % replicas][i // replicas] for i in range(300)]
    assert interleaved == single


def test_bad_weights_are_refused(train_samples):
    with pytest.raises(ValueError, match="got 3 weights for a dataset of 250 items"):
        DatasetWeightedSampler(train_samples, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        DatasetWeightedSampler(train_samples, [0.0] * len(train_samples))


def _first_batch(samples: list[dict], seed: int) -> dict:
    set_determinism(seed)
    loader = DataLoader(
        Dataset(samples, train_transforms(48, load_registry(DEMO_DIR / "datasets.yaml"))),
        batch_size=6,
        sampler=weighted_sampler(samples, seed=seed),
        num_workers=0,
    )
    return next(iter(loader))


def test_same_seed_gives_the_same_batch(train_samples):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second, other = (_first_batch(train_samples, seed) for seed in (7, 7, 8))
    finally:
        set_determinism(None)
        torch.set_num_threads(threads)
    for key in ("image", "label", "cls_label", "task_id", "mode_prompt", "position_prompt"):
        assert torch.equal(first[key], second[key]), key
    assert first["dataset"] == second["dataset"]
    assert not torch.equal(first["image"], other["image"])
