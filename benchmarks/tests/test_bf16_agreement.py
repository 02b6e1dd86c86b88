"""benchmarks/bf16_agreement.py: fp32 and bf16 predictions of a checkpoint compared per dataset."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import bf16_agreement
from bundle.workflows.inferers import cpu_supports_bf16
from bundle.prompts import CLASSIFICATION, SEGMENTATION
from tests.bundle_runner import REPO_ROOT
from tests.conftest import write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _sample(dataset: str, task: str, mask: list[list[int]], probabilities: list[float]) -> dict:
    return {
        "dataset": dataset,
        "task": task,
        "mask": torch.tensor(mask),
        "probabilities": torch.tensor(probabilities),
    }


def test_agreement_counts_equal_mask_pixels_and_the_largest_probability_change():
    fp32 = [
        _sample("A", SEGMENTATION, [[0, 1], [1, 1]], [0.5, 0.5]),
        _sample("B", SEGMENTATION, [[0, 0], [0, 0]], [0.5, 0.5]),
        _sample("C", CLASSIFICATION, [[0, 0], [0, 0]], [0.9, 0.1]),
    ]
    bf16 = [
        _sample("A", SEGMENTATION, [[0, 1], [0, 1]], [0.1, 0.9]),  # one pixel of four differs
        _sample("B", SEGMENTATION, [[0, 0], [0, 0]], [0.5, 0.5]),
        _sample("C", CLASSIFICATION, [[1, 1], [1, 1]], [0.8, 0.2]),  # seg output of a cls sample: ignored
    ]
    table = bf16_agreement.agreement(fp32, bf16)
    assert list(table) == ["A", "B", "C", "all"]
    assert table["A"]["mask_agreement"] == 0.75 and table["B"]["mask_agreement"] == 1.0
    assert table["all"]["mask_agreement"] == 7 / 8
    assert math.isnan(table["C"]["mask_agreement"])
    assert table["C"]["max_probability_change"] == pytest.approx(0.1)
    assert math.isnan(table["A"]["max_probability_change"])


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU lacks native bf16, so the script refuses to run")
def test_script_compares_a_checkpoint_on_the_demo_test_split(tmp_path, capsys):
    configs = [str(REPO_ROOT / "configs" / "evaluate.yaml")]
    checkpoint = write_checkpoint(tmp_path / "model.pt")  # evaluate.yaml builds the network it describes
    table = bf16_agreement.main(["--config_file", repr(configs), "--ckpt_path", str(checkpoint), "--threads", "1"])["bf16"]
    assert set(table) == {"BUSI", "Fetal_HC", "TG3K", "all"}
    for dataset in ("Fetal_HC", "TG3K", "all"):
        assert 0.9 <= table[dataset]["mask_agreement"] <= 1.0, dataset
    assert 0.0 <= table["BUSI"]["max_probability_change"] < 0.1
    assert "| all |" in capsys.readouterr().out


def test_onnxruntime_and_int8_are_compared_with_eager_fp32_on_the_demo_test_split(tmp_path, capsys):
    configs = [str(REPO_ROOT / "configs" / "evaluate.yaml")]
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    argv = ["--config_file", repr(configs), "--ckpt_path", str(checkpoint), "--threads", "1"]
    tables = bf16_agreement.main([*argv, "--variants", "onnxruntime", "int8"])
    assert set(tables) == {"onnxruntime", "int8"}
    for dataset in ("BUSI", "Fetal_HC", "TG3K"):  # the exported graph computes what eager does
        assert tables["onnxruntime"][dataset]["mask_agreement"] >= 0.999, dataset
        assert 0.5 <= tables["int8"][dataset]["mask_agreement"] <= 1.0, dataset
    assert tables["onnxruntime"]["BUSI"]["max_probability_change"] < 1e-3
    assert "| int8 | all |" in capsys.readouterr().out
