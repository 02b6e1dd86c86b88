"""Seeded train / val / test splits, stratified by class and keeping groups of related images together."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence

from bundle.data.samples import SPLITS


def split_ids(
    ids: Sequence[str],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    strata: Mapping[str, Hashable] | None = None,
    groups: Mapping[str, Hashable] | None = None,
    names: Sequence[str] = SPLITS,
) -> dict[str, list[str]]:
    """Assign every id to one split.

    Within each stratum (e.g. class), groups (e.g. one patient, one video) are shuffled with
    ``seed`` and, largest first, each goes to the split that is least filled relative to its
    target fraction (ties: the larger target). Singletons therefore split in the exact
    proportions, and every split gets at least one group while groups remain.

    Args:
        ids: the items to split (unique).
        fractions: target fraction of each split, summing to 1.
        seed: shuffling seed; the same seed and ids give the same split.
        strata: id -> stratum (class); a group takes the most common stratum of its members.
        groups: id -> group key; ids of one group always land in the same split.
        names: split names, one per fraction.

    Returns:
        split name -> ids in input order.
    """
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions {list(fractions)} must be {len(names)} non-negative numbers summing to 1")
    if len(set(ids)) != len(ids):
        raise ValueError("split_ids: ids must be unique")
    members: dict[Hashable, list[str]] = defaultdict(list)
    for item in ids:
        members[groups[item] if groups is not None else item].append(item)
    by_stratum: dict[Hashable, list[list[str]]] = defaultdict(list)
    for group in members.values():
        stratum = Counter(strata[i] for i in group).most_common(1)[0][0] if strata is not None else None
        by_stratum[stratum].append(group)
    rng = random.Random(seed)
    assigned: dict[str, str] = {}
    for stratum in sorted(by_stratum, key=repr):
        stratum_groups = by_stratum[stratum]
        rng.shuffle(stratum_groups)
        stratum_groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        total = sum(len(g) for g in stratum_groups)
        filled = dict.fromkeys(names, 0)
        targets = {name: fraction * total for name, fraction in zip(names, fractions)}
        for group in stratum_groups:
            open_splits = [n for n in names if targets[n] > 0]
            name = min(open_splits, key=lambda n: (filled[n] / targets[n], -targets[n]))
            filled[name] += len(group)
            assigned.update(dict.fromkeys(group, name))
    return {name: [i for i in ids if assigned[i] == name] for name in names}
