"""benchmarks/benchmark.py (the issue-9 table): one subprocess per pair, ratios, skipped paths, records."""

from __future__ import annotations

import json

import pytest

from benchmarks import benchmark
from benchmarks.tests.conftest import SMALL


def test_table_gives_ratios_to_reference_and_official_per_workload_and_keeps_notes():
    Measurement = benchmark.Measurement
    measurements = [
        Measurement("official", "infer-b8", [2.0, 2.0], 1000.0),
        Measurement("reference", "infer-b8", [1.6], 800.0),
        Measurement("fast", "infer-b8", [1.0, 1.2, 0.8], 500.0),
        Measurement("fast", "infer-b1", [0.5], 400.0),  # no baseline measured on this workload
        Measurement("SwinUNETR-24", "infer-b8", note="failed: ModuleNotFoundError: No module named 'einops'"),
    ]
    rows = benchmark.table(measurements, {"compiled": "skipped: --compile runs it"}).splitlines()
    assert rows[0].endswith("| speed vs reference | RSS vs reference | speed vs official | RSS vs official |")
    assert rows[4] == "| fast | infer-b8 | 1.000 | 8.00 | 500 | 1.60× | 0.62× | 2.00× | 0.50× |"
    assert rows[5] == "| fast | infer-b1 | 0.500 | 2.00 | 400 |  |  |  |  |"
    assert "failed: ModuleNotFoundError" in rows[6]
    assert rows[7].startswith("| compiled | all | skipped: --compile runs it |")


def test_one_run_measures_every_pair_in_its_own_process_and_records_it(tmp_path, capsys):
    record = tmp_path / "results.json"
    argv = ["--paths", "reference", "fast", "compiled", "--workloads", "infer-b1", "--repeats", "2", "--warmup", "0"]
    benchmark.main(argv + ["--threads", "1", "--json", str(record), *SMALL.argv()])
    out = capsys.readouterr().out
    assert "torch: " in out and "cpu: " in out  # the machine is on record
    assert f"1 threads, {SMALL}, median of 2×1 calls" in out
    assert "| reference | infer-b1 |" in out and "| fast | infer-b1 |" in out
    assert "| compiled | all | skipped: --compile runs it" in out
    results = json.loads(record.read_text())["results"]
    assert [(r["path"], r["workload"], len(r["times"])) for r in results] == [
        ("reference", "infer-b1", 2),
        ("fast", "infer-b1", 2),
    ]
    assert all(r["peak_rss_mb"] > 100 and not r["note"] for r in results)  # each worker's own, torch imported


def test_official_path_without_a_perceptguide_checkout_stops_with_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        benchmark.main(["--official-repo", str(tmp_path), "--paths", "official", "--workloads", "infer-b1"])
    assert str(tmp_path) in str(stopped.value)


def test_official_paths_need_the_official_code():
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--paths", "official-bf16"])
