"""The encoder pretraining recipe (`rcdm pretrain`): step budget, kNN report, stints that keep their lineage, and
fp16 saving that the registry loads back into float32. Width-8 nets on 64 CIFAR images, a few steps each."""
import json

import pytest
import torch
from safetensors.torch import load_file

from rcdm.encoders import load_encoder
from rcdm.ssl import SSLConfig, SSLEncoder, train_ssl

TINY = dict(width=8, proj_hidden=32, proj_out=16, batch_size=16, warmup_steps=1, threads=1, minutes=10.0)


@pytest.fixture(scope="module")
def stint1(tiny_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("ssl") / "stint1"
    report = train_ssl(SSLConfig(data=str(tiny_npz), out=str(out), max_steps=3, test_data=f"{tiny_npz}:train", **TINY))
    return out, report


def test_step_budget_and_knn_report(stint1):
    out, report = stint1
    assert report["steps"] == 3 and report["images_seen"] == 48
    assert set(report["knn"]) == {f"{w}_{layer}" for w in ("trained", "random") for layer in ("backbone", "projector")}
    assert all(0.0 <= v <= 1.0 for v in report["knn"].values())
    cfg = json.loads((out / "config.json").read_text())
    assert [s["steps"] for s in cfg["training"]["stints"]] == [3] and cfg["training"]["weights_dtype"] == "float32"
    assert load_encoder(f"file:{out}", "projector").dim == 16


def test_stint_continues_the_weights_keeps_the_lineage_and_saves_fp16(stint1, tiny_npz, tmp_path):
    first, _ = stint1
    out = tmp_path / "stint2"
    # A vanishing LR: the second stint's weights must stay those it was initialised from (up to fp16 rounding).
    train_ssl(SSLConfig(data=str(tiny_npz), out=str(out), max_steps=2, init_from=str(first), lr=1e-9,
                        save_dtype="float16", **TINY))
    cfg = json.loads((out / "config.json").read_text())
    stints = cfg["training"]["stints"]
    assert [s["steps"] for s in stints] == [3, 2] and stints[1]["init_from"] == str(first)
    assert cfg["training"]["weights_dtype"] == "float16"
    saved, before = load_file(str(out / "model.safetensors")), load_file(str(first / "model.safetensors"))
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float16}
    weights = [k for k in before if k.endswith("weight")]
    torch.testing.assert_close({k: saved[k].float() for k in weights}, {k: before[k] for k in weights},
                               rtol=2e-3, atol=1e-4)
    fresh = SSLEncoder(8, 32, 16).state_dict()
    assert any((fresh[k] - before[k]).abs().max() > 1e-2 for k in weights)  # so the check above can fail
    enc = load_encoder(f"file:{out}", "backbone")
    assert enc.dim == 64 and next(enc.parameters()).dtype == torch.float32
