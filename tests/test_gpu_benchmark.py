"""benchmarks/gpu_train.py: the MFU arithmetic, the device-peak table, the per-configuration guard and budget, and a
--smoke run on the CPU that writes the CSV/JSON schema of a GPU run."""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_train.py"


@pytest.fixture(scope="module")
def gt():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mfu_is_model_flops_per_second_over_the_peak(gt):
    assert gt.mfu(989.5e12, 2.0, 989.5) == pytest.approx(0.5)
    assert gt.mfu(58.9e12, 0.25, 989.5) == pytest.approx(58.9 / 0.25 / 989.5)  # ~ a 32-image imagenet-128 step
    assert gt.mfu(1e12, 1.0, None) is None and gt.mfu(1e12, 0.0, 100.0) is None and gt.mfu(0, 1.0, 100.0) is None


def test_device_peak_lookup_knows_the_datasheet_variants(gt):
    peaks = {"NVIDIA H200": 989.5, "NVIDIA H100 80GB HBM3": 989.5, "NVIDIA H100 PCIe": 756.5, "NVIDIA H200 NVL": 835.5,
             "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100 80GB PCIe": 312.0, "NVIDIA L40S": 362.05,
             "NVIDIA GeForce RTX 3060": None, "cpu": None}
    assert {name: gt.device_peak_tflops(name) for name in peaks} == peaks
    assert gt.resolve_peak("NVIDIA H200", None)[0] == 989.5
    assert gt.resolve_peak("NVIDIA H200", 700.0) == (700.0, "--peak-tflops")
    peak, why = gt.resolve_peak("cpu", None)
    assert peak is None and "--peak-tflops" in why


def test_a_failing_configuration_becomes_a_row(gt):
    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    row = gt.guarded({"config": "x"}, oom)
    assert row == {"config": "x", "status": "error", "error": "RuntimeError: CUDA out of memory. Tried to allocate "
                                                               "2.00 GiB"}
    assert gt.guarded({"config": "y"}, lambda: {"img_s": 1.0}) == {"config": "y", "img_s": 1.0, "status": "ok"}


def test_budget_skips_a_first_compile_it_cannot_cover(gt):
    budget = gt.Budget(60.0)
    assert budget.allows("eager") and not budget.allows("compile")  # a first compile is guessed at 90 s
    budget.record("compile", 10.0)
    assert budget.allows("compile")
    assert not gt.Budget(0.0).allows("eager")


@pytest.mark.slow
def test_smoke_run_writes_csv_and_json_with_positive_rates_and_mfu(gt, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--peak-tflops", "0.5"],
                   check=True, env=env, timeout=240, capture_output=True)
    with open(tmp_path / "gpu_train.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == gt.COLUMNS
        rows = list(reader)
    assert [r["kind"] for r in rows] == ["embed", "train"] and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert math.isfinite(float(r["img_s"])) and float(r["img_s"]) > 0
        assert float(r["gflop_per_step"]) > 0
        assert float(r["mfu"]) == pytest.approx(float(r["achieved_tflops"]) / 0.5, rel=0.01, abs=1e-4)
    data = json.loads((tmp_path / "gpu_train.json").read_text())
    assert [tuple(r) for r in data["rows"]] == [gt.COLUMNS] * 2
    assert data["meta"]["device"] == "cpu" and data["meta"]["peak_tflops"] == 0.5 and data["meta"]["wall_s"] > 0
