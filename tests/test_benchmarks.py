"""benchmarks/sampler_nfe.py on a tiny model (sampler specs, measured NFE, CSV and plot) and tools/weight_average.py."""
import csv
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rcdm import RCDMPipeline
from conftest import make_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _load(name, folder="benchmarks"):
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
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


def _with_history(pipe_dir, runs, encoder_dir):
    """Give a tiny pipeline a training history and, as `rcdm train` wrote it before models carried their encoder, a
    relative encoder path out of the directory."""
    meta_path = pipe_dir / "rcdm_pipeline.json"
    meta = json.loads(meta_path.read_text())
    shutil.rmtree(pipe_dir / "encoder")
    meta["encoder"]["spec"] = "file:" + os.path.relpath(encoder_dir, pipe_dir)
    meta["training"] = {"command": runs[-1][0], "steps": runs[-1][1],
                        "history": [{"command": c, "steps": s} for c, s in runs]}
    meta_path.write_text(json.dumps(meta))


def test_weight_average_mixes_weights_and_records_both_branches(tmp_path, tiny_encoder_dir):
    wa = _load("weight_average", "tools")
    a = make_tiny_pipeline(tmp_path / "a", tiny_encoder_dir, seed=0)
    b = make_tiny_pipeline(tmp_path / "b", tiny_encoder_dir, seed=1)
    _with_history(a, [("parent", 100), ("branch a", 30)], tiny_encoder_dir)
    _with_history(b, [("parent", 100), ("branch b", 7)], tiny_encoder_dir)
    out = tmp_path / "deeper" / "soup"  # another depth, so a copied relative encoder path would break
    out.parent.mkdir()
    wa.main([str(out), str(a), str(b), "--weight-a", "0.25"])

    sa, sb, soup = (load_file(d / wa.WEIGHTS) for d in (a, b, out))
    assert any((sa[k] != sb[k]).any() for k in sa)  # seeds differ, so the mean is not trivially either input
    for k in sa:
        torch.testing.assert_close(soup[k], 0.25 * sa[k] + 0.75 * sb[k])
    runs = json.loads((out / "rcdm_pipeline.json").read_text())["training"]["history"]
    assert [(r["command"], r["steps"]) for r in runs[:3]] == [("parent", 100), ("branch a", 30), ("branch b", 7)]
    assert runs[3]["steps"] == 0 and "weight_average.py" in runs[3]["command"] and "0.25" in runs[3]["command"]
    assert not (out.parent / "soup.tmp").exists()
    RCDMPipeline.from_pretrained(out)  # the result loads as a model, encoder included


def test_weight_average_refuses_other_representations_and_existing_output(tmp_path, tiny_encoder_dir, capsys):
    wa = _load("weight_average", "tools")
    a = make_tiny_pipeline(tmp_path / "a", tiny_encoder_dir, layer="backbone")
    p = make_tiny_pipeline(tmp_path / "p", tiny_encoder_dir, layer="projector")
    with pytest.raises(SystemExit, match="different representations"):
        wa.main([str(tmp_path / "soup"), str(a), str(p)])
    with pytest.raises(SystemExit, match="not an exported rcdm pipeline"):
        wa.main([str(tmp_path / "soup"), str(a), str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse's error: exit status 2, message on stderr
        wa.main([str(a), str(a), str(a)])
    assert "exists; choose a new directory" in capsys.readouterr().err
    assert not (tmp_path / "soup").exists()
