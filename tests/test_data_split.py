"""bundle.data.split_ids: seeded, stratified, group-keeping train/val/test splits."""

from __future__ import annotations

from collections import Counter

import pytest

from bundle.data import split_ids

IDS = [f"case{i:03d}" for i in range(100)]


def test_singletons_split_in_exact_proportions_and_cover_every_id():
    split = split_ids(IDS, seed=0)
    assert {k: len(v) for k, v in split.items()} == {"train": 70, "val": 10, "test": 20}
    assert sorted(sum(split.values(), [])) == IDS


def test_same_seed_same_split_other_seed_other_split():
    assert split_ids(IDS, seed=4) == split_ids(IDS, seed=4)
    assert split_ids(IDS, seed=4) != split_ids(IDS, seed=5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_class_is_split_in_proportion(seed):
    strata = {i: ("a" if n < 60 else "b") for n, i in enumerate(IDS)}
    split = split_ids(IDS, seed=seed, strata=strata)
    for name, fraction in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        counts = Counter(strata[i] for i in split[name])
        assert counts == {"a": round(60 * fraction), "b": round(40 * fraction)}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_groups_never_straddle_splits_and_every_split_gets_one(seed):
    sizes = [41, 19, 14, 13, 13]  # the TG3K video geometries of the demo data
    groups = {}
    for group, size in enumerate(sizes):
        groups.update({f"g{group}_{k}": group for k in range(size)})
    ids = list(groups)
    split = split_ids(ids, seed=seed, groups=groups)
    where = {g: {name for name, members in split.items() for i in members if groups[i] == g} for g in range(5)}
    assert all(len(names) == 1 for names in where.values())
    assert all(split[name] for name in split)
    assert 55 <= len(split["train"]) <= 80


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fractions": (0.5, 0.5)}, "must be 3 non-negative numbers summing to 1"),
        ({"fractions": (0.7, 0.2, 0.2)}, "summing to 1"),
    ],
)
def test_bad_fractions_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_ids(IDS, **kwargs)


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="unique"):
        split_ids(["a", "a", "b"])
