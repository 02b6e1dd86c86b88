"""Dataset-weighted sampling (official: every sample weighted 1/sqrt(size of its dataset)).

With per-sample weight 1/sqrt(n_d), dataset d is drawn with probability
sqrt(n_d) / sum_k sqrt(n_k): small datasets are seen more often than their share, large ones
less, between proportional (weight 1) and uniform-per-dataset (weight 1/n) sampling.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

GROUP_KEYS: dict[str, tuple[str, ...]] = {"dataset": ("task", "dataset"), "organ": ("organ",)}


def dataset_weights(samples: Sequence[Mapping], group_by: str = "dataset") -> list[float]:
    """Per-sample weight 1/sqrt(n), n the number of samples of the sample's group.

    Args:
        samples: sample dicts (``bundle.data.load_samples``).
        group_by: ``"dataset"`` (one group per declared dataset, i.e. per task and name) or
            ``"organ"`` (the official code pools datasets of one position prompt).
    """
    if group_by not in GROUP_KEYS:
        raise ValueError(f"group_by must be one of {list(GROUP_KEYS)}, got '{group_by}'")
    keys = [tuple(sample[k] for k in GROUP_KEYS[group_by]) for sample in samples]
    counts = Counter(keys)
    return [1.0 / math.sqrt(counts[key]) for key in keys]


class DatasetWeightedSampler(DistributedSampler):
    """Weighted sampling with replacement that shards across DDP ranks and replays by seed and epoch.

    Each epoch draws ``num_samples`` indices from ``torch.multinomial(weights)`` with a
    generator seeded by ``seed + epoch`` (MONAI workflows call ``set_epoch`` on a
    DistributedSampler), identically on every rank; rank r takes draws r, r + R, r + 2R, ...
    So the R ranks together draw exactly from the weights, and a resumed run repeats the
    epoch's draws. (MONAI's DistributedWeightedRandomSampler instead re-normalises the weights
    within each rank's shard and carries its generator state across epochs.)

    Args:
        dataset: the dataset (only its length is used).
        weights: one weight per dataset item, e.g. ``dataset_weights(samples)``.
        num_samples: draws per epoch over all ranks; defaults to ``len(dataset)``.
        seed: base seed.
        num_replicas: number of ranks; defaults to the process group's size, or 1 without one.
        rank: this rank; defaults to the process group's rank, or 0.
    """

    def __init__(
        self,
        dataset: Sequence,
        weights: Sequence[float],
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.weights = _checked_weights(weights, len(dataset))
        total = len(dataset) if num_samples is None else num_samples
        if total <= 0:
            raise ValueError(f"num_samples must be positive, got {total}")
        self.num_samples = math.ceil(total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def _checked_weights(weights: Sequence[float], length: int) -> torch.Tensor:
    checked = torch.as_tensor(weights, dtype=torch.double)
    if len(checked) != length:
        raise ValueError(f"got {len(checked)} weights for a dataset of {length} items")
    if not torch.all(checked >= 0) or float(checked.sum()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return checked


def weighted_sampler(
    samples: Sequence[Mapping], seed: int = 0, num_samples: int | None = None, group_by: str = "dataset"
) -> DatasetWeightedSampler:
    """The training sampler of the configs: official 1/sqrt(n) weights per dataset (``dataset_weights``).

    Args:
        samples: the training sample dicts (the DataLoader's dataset must list them in this order).
        seed: base seed (epoch e draws with ``seed + e``).
        num_samples: draws per epoch over all ranks; defaults to ``len(samples)``.
        group_by: see ``dataset_weights``.
    """
    return DatasetWeightedSampler(samples, dataset_weights(samples, group_by), num_samples=num_samples, seed=seed)


class MixedShareSampler(DatasetWeightedSampler):
    """Batches of a set share of unlabelled samples, the rest drawn as :class:`DatasetWeightedSampler` does.

    The dataset lists the labelled samples first, then ``num_unlabelled`` unlabelled ones. Each
    run of ``batch_size`` indices holds ``round(share · batch_size)`` unlabelled draws (uniform,
    with replacement) after the labelled ones, so a DataLoader of that batch size (``drop_last``)
    gets the share in every batch. Epoch e draws with ``seed + e``; one process only.

    Args:
        dataset: labelled then unlabelled items (only its length is used).
        weights: one weight per labelled item.
        num_unlabelled: how many unlabelled items end the dataset.
        batch_size: the DataLoader's batch size.
        share: unlabelled fraction of each batch, in (0, 1).
        seed: base seed.
    """

    def __init__(
        self, dataset: Sequence, weights: Sequence[float], num_unlabelled: int, batch_size: int, share: float, seed: int = 0
    ) -> None:
        labelled = len(dataset) - num_unlabelled
        if not 0 < share < 1 or num_unlabelled < 1 or labelled < 1:
            raise ValueError(
                f"a mixed batch needs labelled and unlabelled samples and 0 < share < 1; got {labelled} labelled, "
                f"{num_unlabelled} unlabelled, share {share}"
            )
        super().__init__(dataset[:labelled], weights, num_samples=labelled, seed=seed, num_replicas=1, rank=0)
        self.labelled, self.num_unlabelled, self.batch_size = labelled, num_unlabelled, batch_size
        self.per_batch = min(max(round(share * batch_size), 1), batch_size - 1)
        self.batches = max(labelled // (batch_size - self.per_batch), 1)
        self.num_samples = self.total_size = self.batches * batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = self.batch_size - self.per_batch
        drawn = torch.multinomial(self.weights, self.batches * size, replacement=True, generator=generator)
        extra = torch.randint(self.labelled, self.labelled + self.num_unlabelled, (self.batches, self.per_batch), generator=generator)
        return iter(torch.cat([drawn.view(self.batches, size), extra], 1).flatten().tolist())


def labelled_weights(samples: Sequence[Mapping], rehearsal_share: float = 0.0) -> list[float]:
    """``dataset_weights`` of labelled samples; with replayed ones (``rehearsal: 1``), scaled so that
    these are drawn with probability ``rehearsal_share`` and the new ones with the rest.

    Raises:
        ValueError: replayed samples and a share outside (0, 1), or only replayed samples.
    """
    weights = dataset_weights(samples)
    replayed = [bool(sample.get("rehearsal", 0)) for sample in samples]
    if not any(replayed):
        return weights
    if not 0 < rehearsal_share < 1 or all(replayed):
        raise ValueError(
            f"rehearsal needs new samples beside the replayed ones and 0 < rehearsal_share < 1; got "
            f"{len(samples) - sum(replayed)} new, {sum(replayed)} replayed, share {rehearsal_share}"
        )
    old_total = sum(w for w, r in zip(weights, replayed) if r)
    new_total = sum(weights) - old_total
    return [w * (rehearsal_share / old_total if r else (1 - rehearsal_share) / new_total) for w, r in zip(weights, replayed)]


def training_sampler(
    samples: Sequence[Mapping],
    seed: int = 0,
    batch_size: int = 1,
    unlabelled_share: float = 0.5,
    rehearsal_share: float = 0.0,
) -> DatasetWeightedSampler:
    """The pretraining sampler: official dataset weights, replayed old samples (``rehearsal: 1``) drawn
    with probability ``rehearsal_share``, and unlabelled samples (``labelled == 0``, listed last) at
    ``unlabelled_share`` of every batch when there are any. An epoch draws at least one batch (a few
    labelled images, e.g. when adapting to five, still train)."""
    unlabelled = sum(1 for sample in samples if sample.get("labelled", 1) == 0)
    labelled = samples[: len(samples) - unlabelled]
    if any(sample.get("labelled", 1) == 0 for sample in labelled):
        raise ValueError("unlabelled samples must follow the labelled ones in the training list")
    weights = labelled_weights(labelled, float(rehearsal_share))
    if not unlabelled:
        return DatasetWeightedSampler(samples, weights, num_samples=max(len(samples), batch_size), seed=seed)
    return MixedShareSampler(samples, weights, unlabelled, batch_size, float(unlabelled_share), seed)
