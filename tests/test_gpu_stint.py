"""The GPU stint's tools: bounded shards that rebuild a pipeline exactly, and the whole script in --smoke form."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CIFAR_NPZ
from rcdm import RCDMPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from pack_pipeline import pack, unpack  # noqa: E402


def test_pack_splits_into_bounded_shards_and_unpacks_bit_for_bit(tiny_pipeline_dir, tmp_path):
    shards = pack(tiny_pipeline_dir, tmp_path / "packed", max_mib=0.75)
    assert len(shards) > 1 and all(p.stat().st_size <= 0.75 * 2**20 for p in shards)
    dest = unpack(tmp_path / "packed", tmp_path / "rebuilt")
    for f in Path(tiny_pipeline_dir).rglob("*"):
        rel = f.relative_to(tiny_pipeline_dir)
        if f.suffix == ".safetensors":
            a, b = load_file(str(f)), load_file(str(dest / rel))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif f.is_file():
            assert (dest / rel).read_text() == f.read_text()
    h = torch.randn(1, RCDMPipeline.from_pretrained(dest).unet.config.embedding_dim)
    g = [torch.Generator().manual_seed(0)]
    want = RCDMPipeline.from_pretrained(tiny_pipeline_dir)(embeddings=h, num_inference_steps=2, generator=g,
                                                           output_type="pt").images
    g = [torch.Generator().manual_seed(0)]
    got = RCDMPipeline.from_pretrained(dest)(embeddings=h, num_inference_steps=2, generator=g, output_type="pt").images
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_unpack_refuses_a_missing_shard(tiny_pipeline_dir, tmp_path):
    shards = pack(tiny_pipeline_dir, tmp_path / "packed", max_mib=0.75)
    shards[-1].unlink()
    with pytest.raises(ValueError, match=f"{len(shards) - 1} of {len(shards)} shards present"):
        unpack(tmp_path / "packed", tmp_path / "x")


@pytest.mark.slow
def test_gpu_stint_smoke_leaves_what_a_remote_machine_can_send_back(tmp_path):
    """SMOKE=1 runs every stage on the CPU with tiny settings: judge, cache, two candidates (plain, REPA), scores
    for the shipped and the new models, the pick and the pack. $OUT must hold at most 8 files of at most 16 MiB."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "WORK": str(work), "DATA": str(CIFAR_NPZ),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_stint.sh")], env=env, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files), files
    assert (out / "judge" / "config.json").is_file() and (out / "judge" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (work / "scores.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"backbone", "projector", "plain", "repa"}
    assert all(r["clf_acc_samples"] is not None and r["weights_sha256"] for r in rows)
    best = (work / "best.txt").read_text().strip()
    pipe = RCDMPipeline.from_pretrained(unpack(out / "cand", tmp_path / "cand"))
    assert (pipe.unet.config.align_dim > 0) == (best == "repa")
    with tarfile.open(out / "results.tar.gz") as tar:
        assert {"./scores.jsonl", "./log.txt", "./plain/losses.jsonl", "./repa/losses.jsonl"} <= set(tar.getnames())


def test_unpack_can_rename_the_encoder_spec_and_the_fingerprint_still_guards_it(tiny_pipeline_dir, tmp_path):
    pack(tiny_pipeline_dir, tmp_path / "packed")
    enc_dir = Path(tiny_pipeline_dir) / "encoder"  # save_pretrained copied the tiny encoder in
    dest = unpack(tmp_path / "packed", tmp_path / "renamed", encoder_spec=f"file:{enc_dir.resolve()}")
    meta = json.loads((dest / "rcdm_pipeline.json").read_text())
    assert meta["encoder"]["spec"] == f"file:{enc_dir.resolve()}"
    assert RCDMPipeline.from_pretrained(dest).encoder.dim == meta["encoder"]["dim"]
    wrong = unpack(tmp_path / "packed", tmp_path / "wrong", encoder_spec="pretrained:simclr-cifar10-r18w32")
    with pytest.raises(ValueError, match="fingerprint|expects|dim"):
        RCDMPipeline.from_pretrained(wrong)
