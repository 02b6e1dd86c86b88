"""benchmarks/label_efficiency.py: nested per-dataset subsets and their pool, each method's commands, a real cell."""

from __future__ import annotations

import ast
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest

from benchmarks import DEMO_DATA
from benchmarks import label_efficiency as le
from tests.bundle_runner import TINY_MODEL, TINY_RUN

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = le.read_datalist(DEMO_DATA / "datalist.json")
FRACTIONS = (0.01, 0.1, 0.25, 1.0)


def _cases(entries: list[dict]) -> set[tuple[str, str]]:
    return {(entry["dataset"], Path(entry["image"]).name) for entry in entries}


def _overrides(command: list[str]) -> dict[str, str]:
    """The ``--key value`` pairs of a ``monai.bundle run`` or ``benchmarks.unet_baseline`` command."""
    start = command.index("run") + 1 if "run" in command else 3
    pairs = command[start:]
    return {key.removeprefix("--"): value for key, value in zip(pairs[::2], pairs[1::2])}


def _plan(work: Path, *argv: str) -> le.Plan:
    return le.build_plan(le.parse_args(["--fractions", "0.1", "--work_dir", str(work), "--threads", "1", *argv]))


@pytest.mark.parametrize("seed", [0, 1])
def test_subsets_are_nested_per_dataset_and_the_pool_is_what_they_leave_out(seed: int) -> None:
    everything = _cases(SOURCE["training"])
    totals = Counter(dataset for dataset, _ in everything)
    subsets = [le.make_subset(SOURCE["training"], fraction, seed) for fraction in FRACTIONS]
    kept = [_cases(subset.training) for subset in subsets]
    assert kept[0] <= kept[1] <= kept[2] <= kept[3] == everything
    for fraction, subset, cases in zip(FRACTIONS, subsets, kept):
        assert subset.labelled == Counter(dataset for dataset, _ in cases)
        assert subset.labelled == {d: max(1, math.floor(fraction * n + 0.5)) for d, n in totals.items()}
        pool = {(dataset, image.name) for dataset, images in subset.left_out.items() for image in images}
        assert pool == everything - cases
        # a kept image keeps all its entries (BUSI: its mask and its class); the pool holds its segmentation image
        assert subset.training == [e for e in SOURCE["training"] if (e["dataset"], Path(e["image"]).name) in cases]
        assert all("/segmentation/BUSI/imgs/" in str(image) for image in subset.left_out["BUSI"])
    assert subsets[0].labelled == {"BUSI": 1, "Fetal_HC": 1, "TG3K": 1}
    assert subsets[1].labelled == {"BUSI": 7, "Fetal_HC": 4, "TG3K": 7}


def test_subsets_are_seeded() -> None:
    first, again = (le.make_subset(SOURCE["training"], 0.25, 0) for _ in range(2))
    other = le.make_subset(SOURCE["training"], 0.25, 1)
    assert first.training == again.training and _cases(first.training) != _cases(other.training)
    with pytest.raises(ValueError, match=r"in \(0, 1\], got 0"):
        le.make_subset(SOURCE["training"], 0.0, 0)


def test_dry_run_gives_each_method_its_configs_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    for image in sorted((DEMO_DATA / "segmentation" / "BUSI" / "imgs").glob("*.png"))[:3]:
        shutil.copy(image, extra)
    work = tmp_path / "work"
    plan = _plan(work, "--ablations", "--unlabelled", str(extra), "breast", "tumor")
    stages, settings = plan.stages, plan.settings
    subset = le.make_subset(SOURCE["training"], 0.1, 0)
    train_configs = repr(["configs/pretrain.yaml", "configs/cpu.yaml"])
    extra_entry = {"dir": str(extra), "organ": "breast", "object_type": "tumor"}

    scratch = _overrides(stages["scratch/f0.1/seed0/train"].command)
    assert scratch["config_file"] == train_configs and "init_ckpt" not in scratch and "unlabelled_dirs" not in scratch
    datalist = Path(scratch["datalist"])
    assert datalist == work / "subsets" / "seed0" / "f0.1" / "datalist.json"
    assert plan.datalists[datalist] == {"training": subset.training, **{k: SOURCE[k] for k in ("validation", "test")}}
    batches = le.supervised_batches(subset.training, settings["batch_size"])
    assert int(scratch["epochs"]) == round(settings["steps"] / batches) and scratch["seed"] == "0"

    evaluation = _overrides(stages["scratch/f0.1/seed0/evaluate"].command)
    assert evaluation["config_file"] == repr(["configs/evaluate.yaml"]) and evaluation["split"] == "test"
    assert evaluation["ckpt_path"] == str(Path(scratch["ckpt_dir"]) / "model.pt")
    assert evaluation["datalist"] == str(datalist)

    encoder = _overrides(stages["ssl-pretrain/ssl/seed0"].command)
    assert encoder["config_file"] == repr(["configs/ssl_pretrain.yaml", "configs/cpu.yaml"])
    pool = ast.literal_eval(encoder["unlabelled_dirs"])
    assert pool[-1] == extra_entry and {e["dir"] for e in pool[:-1]} == {str(work / "pool" / d) for d in subset.labelled}
    linked = [(Path(entry["dir"]).name, image.name) for entry in pool[:-1] for image in plan.links[Path(entry["dir"])]]
    assert sorted(linked) == sorted(_cases(SOURCE["training"]))  # every training image, labelled or not, once
    encoder_file = str(Path(encoder["ckpt_dir"]) / "ssl_encoder.pt")

    ssl = _overrides(stages["ssl/f0.1/seed0/train"].command)
    assert ssl["config_file"] == train_configs and ssl["init_ckpt"] == encoder_file
    assert stages["ssl/f0.1/seed0/train"].needs == ("ssl-pretrain/ssl/seed0",)
    shared = ("datalist", "epochs", "seed")
    assert {key: ssl[key] for key in shared} == {key: scratch[key] for key in shared}

    consistency = _overrides(stages["ssl+consistency/f0.1/seed0/train"].command)
    assert consistency["init_ckpt"] == encoder_file and float(consistency["consistency_weight"]) == 1.0
    folders = ast.literal_eval(consistency["unlabelled_dirs"])
    assert folders[-1] == extra_entry
    assert {Path(e["dir"]).name: (e["organ"], e["object_type"]) for e in folders[:-1]} == {
        "BUSI": ("breast", "tumor"), "Fetal_HC": ("head", "organ"), "TG3K": ("thyroid", "organ"),
    }  # fmt: skip
    assert {Path(e["dir"]).name: plan.links[Path(e["dir"])] for e in folders[:-1]} == subset.left_out
    unlabelled = sum(len(images) for images in subset.left_out.values()) + 3
    mixed = le.supervised_batches(subset.training, settings["batch_size"], unlabelled, 0.5)
    assert int(consistency["epochs"]) == round(settings["steps"] / mixed) and "consistency_rampup_epochs" in consistency

    unet = stages["unet/f0.1/seed0/train"]
    assert unet.command[1:3] == ["-m", "benchmarks.unet_baseline"]
    assert _overrides(unet.command)["datalist"] == str(datalist)
    assert unet.minutes_from == "scratch/f0.1/seed0/train" and unet.needs == (unet.minutes_from,)

    for variant, switch in le.ABLATIONS.items():
        ablated = _overrides(stages[f"ssl-pretrain/{variant}/seed0"].command)
        assert {key: ablated[key] for key in switch} == switch
        cell = _overrides(stages[f"{variant}/f0.1/seed0/train"].command)
        assert cell["init_ckpt"] == str(Path(ablated["ckpt_dir"]) / "ssl_encoder.pt") != encoder_file

    le.main(["--fractions", "0.1", "--work_dir", str(work), "--threads", "1", "--dry-run"])
    printed = capsys.readouterr().out
    assert "--config_file \"['configs/pretrain.yaml', 'configs/cpu.yaml']\"" in printed
    assert '--minutes "<CPU minutes of scratch/f0.1/seed0/train>"' in printed
    assert not work.exists()  # a dry run writes nothing


def test_a_given_ssl_encoder_replaces_the_ssl_stage_but_not_the_ablations(tmp_path: Path) -> None:
    encoder = tmp_path / "ssl_encoder.pt"
    plan = _plan(tmp_path / "work", "--methods", "ssl", "--ablations", "--ssl_ckpt", str(encoder))
    assert "ssl-pretrain/ssl/seed0" not in plan.stages and "ssl-pretrain/ssl-no-recon/seed0" in plan.stages
    assert _overrides(plan.stages["ssl/f0.1/seed0/train"].command)["init_ckpt"] == str(encoder)
    assert plan.stages["ssl/f0.1/seed0/train"].needs == ()


def test_the_unet_gets_the_cpu_minutes_of_its_scratch_cell_or_the_given_ones(tmp_path: Path) -> None:
    plan = _plan(tmp_path / "work", "--methods", "unet", "scratch")
    unet = plan.stages["unet/f0.1/seed0/train"]
    assert le.resolved_command(unet, {unet.minutes_from: {"cpu_s": 90.0}})[-2:] == ["--minutes", "1.5000"]
    fixed = _plan(tmp_path / "work", "--methods", "unet", "--unet_minutes", "2").stages["unet/f0.1/seed0/train"]
    assert fixed.command[-2:] == ["--minutes", "2"] and fixed.minutes_from is None
    with pytest.raises(ValueError, match="give --unet_minutes"):
        _plan(tmp_path / "work", "--methods", "unet")


def test_seeds_apply_to_the_chosen_fractions_and_the_first_seed_to_the_others(tmp_path: Path) -> None:
    argv = ["--fractions", "0.1", "0.25", "1.0", "--seeds", "0", "1", "2", "--seed_fractions", "0.1", "1.0"]
    plan = _plan(tmp_path / "work", *argv, "--methods", "scratch")
    assert [(c.fraction, c.seed) for c in plan.cells] == [
        (0.1, 0), (0.1, 1), (0.1, 2), (0.25, 0), (1.0, 0), (1.0, 1), (1.0, 2),
    ]  # fmt: skip


def test_consistency_without_unlabelled_images_is_not_run(tmp_path: Path) -> None:
    plan = le.build_plan(le.parse_args(["--fractions", "1", "--methods", "ssl+consistency", "--work_dir", str(tmp_path)]))
    (cell,) = plan.cells
    assert cell.note == "no unlabelled image at this fraction" and not plan.stages


def test_table_gives_mean_and_spread_over_seeds_per_dataset() -> None:
    def row(method: str, seed: int, dice: dict[str, float]) -> dict:
        labelled = {"A": 7, "B": 4}
        return {"method": method, "fraction": 0.1, "seed": seed, "labelled": labelled, "dice": dice, "train_cpu_s": 120.0}

    rows = [
        row("ssl", 0, {"A": 0.5, "B": 0.7}),
        row("scratch", 0, {"A": 0.2, "B": 0.4}),
        row("scratch", 1, {"A": 0.4, "B": 0.6}),
        row("scratch", 2, {}),  # failed
    ]
    lines = le.table(rows).splitlines()
    assert lines[0] == "| labels | images (A / B) | method | seeds | A Dice | B Dice | mean Dice | train CPU min |"
    assert lines[2] == "| 10 % | 7 / 4 | scratch | 2 of 3 | 0.300 ± 0.141 | 0.500 ± 0.141 | 0.400 ± 0.141 | 2.0 |"
    assert lines[3] == "| 10 % | 7 / 4 | ssl | 1 | 0.500 | 0.700 | 0.600 | 2.0 |"


def test_merge_reports_the_cells_of_several_results_files_as_one_table(tmp_path: Path) -> None:
    def cell(method: str, fraction: float, dice: float) -> dict:
        return {"method": method, "fraction": fraction, "seed": 0, "labelled": {"A": 3}, "dice": {"A": dice}, "train_cpu_s": 60.0}

    first, second, markdown = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "table.md"
    first.write_text(json.dumps({"cells": [cell("scratch", 0.1, 0.2), cell("ssl", 0.1, 0.3)]}))
    second.write_text(json.dumps({"cells": [cell("scratch", 1.0, 0.6), cell("ssl", 0.1, 0.4)]}))
    result = le.main(["--merge", str(first), str(second), "--markdown", str(markdown)])
    assert len(result["cells"]) == 3  # the ssl cell of both files once, as the later file has it
    lines = markdown.read_text().splitlines()
    assert lines[2:] == [
        "| 10 % | 3 | scratch | 1 | 0.200 | 0.200 | 1.0 |",
        "| 10 % | 3 | ssl | 1 | 0.400 | 0.400 | 1.0 |",
        "| 100 % | 3 | scratch | 1 | 0.600 | 0.600 | 1.0 |",
    ]


def test_plot_draws_dice_against_the_fraction_per_dataset(tmp_path: Path) -> None:
    rows = [
        {"method": method, "fraction": fraction, "seed": seed, "labelled": {"A": 1}, "dice": {"A": dice + seed / 100}}
        for method, dice in (("scratch", 0.3), ("ssl", 0.5))
        for fraction in (0.1, 1.0)
        for seed in (0, 1)
    ]
    rows.append({"method": "ssl-no-recon", "fraction": 0.1, "seed": 0, "labelled": {"A": 1}, "dice": {"A": 0.4}})
    le.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_a_scratch_cell_runs_end_to_end_writes_its_row_and_is_not_run_twice(tmp_path: Path) -> None:
    work, markdown = tmp_path / "work", tmp_path / "table.md"
    argv = [
        "--methods", "scratch", "--fractions", "0.1", "--steps", "1", "--threads", "1", "--work_dir", str(work),
        "--train_config", str(TINY_RUN), str(TINY_MODEL), "--eval_config", str(TINY_RUN), "--markdown", str(markdown),
    ]  # fmt: skip
    results = le.main(argv)
    (row,) = results["cells"]
    assert row["labelled"] == {"BUSI": 7, "Fetal_HC": 4, "TG3K": 7} and row["epochs"] == 1 and not row["note"]
    assert set(row["dice"]) == {"BUSI", "Fetal_HC", "TG3K"} and all(0.0 <= v <= 1.0 for v in row["dice"].values())
    assert all(n > 0 for n in row["seg_n"].values()) and row["train_cpu_s"] > 0
    assert json.loads((work / "results.json").read_text())["cells"] == results["cells"]
    assert "| 10 % | 7 / 4 / 7 | scratch | 1 |" in markdown.read_text()
    assert (work / "subsets" / "seed0" / "f0.1" / "unlabelled" / "BUSI").is_dir()
    assert le.main(argv)["stages"] == results["stages"]  # every stage found done: nothing ran again
