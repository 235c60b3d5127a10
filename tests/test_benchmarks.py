"""benchmarks/sampler_nfe.py on a tiny model: sampler specs, measured NFE (a guided step costs 2), CSV and plot."""
import csv
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_samplers_reads_guidance_and_refuses_garbage():
    nfe = _load("sampler_nfe")
    assert nfe.parse_samplers("ddim:50, dpm++:10,ddpm:25:g2.5") == [("ddim", 50, 1.0), ("dpm++", 10, 1.0),
                                                                    ("ddpm", 25, 2.5)]
    for bad in ("ddim", "ddim:x", "ddim:5:2", "ddim:5:g", "ddim:5:g2:g3"):
        with pytest.raises(ValueError, match="NAME:STEPS"):
            nfe.parse_samplers(bad)


def test_sampler_benchmark_measures_nfe_and_writes_csv_and_png(tiny_pipeline_dir, cifar_npz, tmp_path):
    nfe = _load("sampler_nfe")
    out_csv, out_png = tmp_path / "s.csv", tmp_path / "s.png"
    nfe.main(["--model", str(tiny_pipeline_dir), "--data", f"{cifar_npz}:test", "--num-images", "4", "--offset", "2",
              "--samplers", "ddim:3,ddpm:2:g2", "--dtype", "bfloat16", "--out-csv", str(out_csv),
              "--out-png", str(out_png)])
    rows = list(csv.DictReader(open(out_csv)))
    assert [r["sampler"] for r in rows] == ["ddim-3", "ddpm-2-g2"]
    assert [float(r["nfe"]) for r in rows] == [3.0, 4.0]  # counted by a hook on the UNet, not assumed
    assert [int(r["num_images"]) for r in rows] == [4, 4] and [int(r["offset"]) for r in rows] == [2, 2]
    assert [float(r["guidance"]) for r in rows] == [1.0, 2.0]
    assert out_png.stat().st_size > 10_000
