"""benchmarks/adaptation.py: nested subsets of the new datasets, each method's commands, a real cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import adaptation as ad
from tests.bundle_runner import TINY_RUN
from tests.conftest import require_shared, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ENTRIES = [{"image": f"/d/{name}_{i:02d}.png", "dataset": name, "task": "segmentation"} for name in ("a", "b") for i in range(40)]


def _overrides(command: list[str]) -> dict[str, str]:
    start = command.index("run") + 1 if "run" in command else 3
    pairs = command[start:]
    return {key.removeprefix("--"): value for key, value in zip(pairs[::2], pairs[1::2])}


@pytest.mark.parametrize("seed", [0, 1])
def test_subsets_are_nested_per_dataset_and_seeded(seed: int) -> None:
    chosen = {n: {e["image"] for e in ad.nested_subset(ENTRIES, n, seed)[0]} for n in (5, 10, 20, 40)}
    assert chosen[5] < chosen[10] < chosen[20] < chosen[40]
    kept, labelled = ad.nested_subset(ENTRIES, 5, seed)
    assert labelled == {"a": 5, "b": 5} and sum(e["dataset"] == "a" for e in kept) == 5
    assert kept == ad.nested_subset(list(reversed(ENTRIES)), 5, seed)[0]  # the order of the source does not matter
    assert chosen[5] != {e["image"] for e in ad.nested_subset(ENTRIES, 5, seed + 1)[0]}


def _planner(work: Path, *argv: str) -> ad.Planner:
    require_shared("data_adapt/mmotu")
    planner = ad.Planner(ad.parse_args(["--work_dir", str(work), "--threads", "1", *argv]))
    planner.build()
    return planner


def test_each_method_trains_what_it_says_and_the_unet_gets_the_finetune_budget(tmp_path: Path) -> None:
    planner = _planner(tmp_path, "--counts", "40", "10", "--seeds", "0", "1", "--seed_counts", "10",
                       "--seed_methods", "finetune", "unet", "--forgetting")  # fmt: skip
    stages = planner.stages
    sync = _overrides(stages["sync/n40/seed0"].command)
    assert sync["trainable"] == "prompts" and "configs/finetune.yaml" in sync["config_file"]
    assert _overrides(stages["decoders/n40/seed0"].command)["trainable"] == "decoders"
    assert "decoders/n10/seed0" not in stages  # the parts are compared at --parts_count only
    rehearsal = _overrides(stages["rehearsal/n40/seed0"].command)
    assert rehearsal["trainable"] == "all" and rehearsal["rehearsal_registry_file"].endswith("data/demo/datasets.yaml")
    assert "shipped.yaml" in _overrides(stages["scratch/n40/seed0"].command)["config_file"]
    assert "init_ckpt" not in _overrides(stages["scratch/n40/seed0"].command)
    assert stages["unet/n10/seed1"].minutes_from == "finetune/n10/seed1"
    transfer = stages["unet-transfer/n40/seed0"]
    assert "--init" in transfer.command and "unet-pretrain" in transfer.needs
    assert {"finetune/n10/seed1", "unet/n10/seed1"} <= set(stages) and "sync/n10/seed1" not in stages
    assert "sync/n40/seed0/forgetting" in stages and "sync/n10/seed0/forgetting" not in stages
    shipped = _overrides(stages["shipped/test"].command)  # N = 0: the start, evaluated as it is
    assert shipped["ckpt_path"] == str(planner.init_ckpt) and "shipped/forgetting" in stages
    test_lists = {json.dumps(splits["test"], sort_keys=True) for splits in planner.datalists.values()}
    assert len(test_lists) == 1  # every cell is scored on the same held-out images
    (test,) = [splits["test"] for splits in planner.datalists.values()][:1]
    assert {e["dataset"] for e in test} == {"mmotu", "busbra"} and 36 <= len(test) <= 44
    training = [e["image"] for splits in planner.datalists.values() for e in splits["training"]]
    assert not set(training) & {e["image"] for e in test}


def test_a_finetune_cell_runs_end_to_end_and_writes_its_row(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "start.pt")
    work, markdown = tmp_path / "work", tmp_path / "table.md"
    argv = [
        "--methods", "finetune", "--counts", "5", "--steps", "1", "--threads", "1", "--work_dir", str(work),
        "--init_ckpt", str(checkpoint), "--train_config", str(TINY_RUN), "--eval_config", str(TINY_RUN),
        "--markdown", str(markdown),
    ]  # fmt: skip
    require_shared("data_adapt/mmotu")
    results = ad.main(argv)
    (row,) = results["cells"]
    assert row["labelled"] == {"busbra": 5, "mmotu": 5} and row["train_cpu_s"] > 0
    assert set(row["dice"]) == {"busbra", "mmotu"} and all(0.0 <= v <= 1.0 for v in row["dice"].values())
    assert "| 5 | finetune | 1 |" in markdown.read_text()
    assert ad.main(argv)["stages"] == results["stages"]  # every stage found done: nothing ran again


def test_joined_studies_count_a_cell_once_and_an_unscored_one_gives_way(tmp_path: Path) -> None:
    def cell(method: str, count: int, dice: dict) -> dict:
        return {"method": method, "count": count, "seed": 0, "dice": dice, "forgetting": {}}

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({"cells": [cell("shipped", 0, {"a": 0.4}), cell("scratch", 20, {})]}))
    second.write_text(json.dumps({"cells": [cell("shipped", 0, {"a": 0.9}), cell("scratch", 20, {"a": 0.3})]}))
    joined = {(row["method"], row["count"]): row["dice"] for row in ad.joined_cells([first, second])}
    assert joined == {("shipped", 0): {"a": 0.4}, ("scratch", 20): {"a": 0.3}}
