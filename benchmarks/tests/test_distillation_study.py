"""benchmarks/distillation_study.py: the study's table and its per-cell spread over seeds."""

from __future__ import annotations

from benchmarks import distillation_study

ROWS = [
    {"cell": "teacher", "dice": {"BUSI": 0.5, "TG3K": 0.7}},
    {"cell": "distilled", "seed": 0, "seconds": 60, "dice": {"BUSI": 0.48, "TG3K": 0.70}},
    {"cell": "distilled", "seed": 1, "seconds": 61, "dice": {"BUSI": 0.46, "TG3K": 0.66}},
    {"cell": "alone", "seed": 0, "seconds": 30, "dice": {"BUSI": 0.40, "TG3K": 0.60}},
]


def test_the_summary_gives_mean_and_sd_over_seeds_per_cell():
    summary = distillation_study.summary(ROWS)
    assert summary["distilled"]["BUSI"] == "0.470 ± 0.014 (2)"
    assert summary["alone"]["TG3K"] == "0.600 ± 0.000 (1)"
    assert summary["teacher"]["BUSI"] == "0.500 ± 0.000 (1)"


def test_the_table_has_a_row_per_run_and_the_summary_below():
    text = distillation_study.table(ROWS)
    assert "| distilled | 1 | 0.460 | 0.660 | 61 |" in text and "| teacher | – | 0.500 | 0.700 | 0 |" in text
    assert "distilled: BUSI 0.470 ± 0.014 (2), TG3K 0.680 ± 0.028 (2)" in text
