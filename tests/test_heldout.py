"""Held-out images during training: which images the grids show, and the periodic held-out rank/top-1."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import tiny_train_config
from rcdm import RCDMPipeline
from rcdm.data import open_dataset
from rcdm.heldout import resolve_spec, spread_indices
from rcdm.images import resize_center_crop, to_pil
from rcdm.sampling import Sampling, sample
from rcdm.train import train


_cfg = tiny_train_config


def test_auto_held_out_spec_is_the_test_split_of_an_npz_that_has_one(tiny_npz, cifar_npz):
    assert resolve_spec("auto", str(cifar_npz)) == f"{cifar_npz}:test"
    assert resolve_spec("auto", f"{cifar_npz}:train") == f"{cifar_npz}:test"
    assert resolve_spec("auto", str(tiny_npz)) == ""  # a train split only: grids fall back to training images
    assert resolve_spec("auto", "/no/such/folder") == ""
    assert resolve_spec("none", str(cifar_npz)) == "" and resolve_spec("val/", str(cifar_npz)) == "val/"


def test_spread_indices_reach_both_ends_and_every_class_of_a_sorted_folder():
    assert spread_indices(5, 8) == [0, 1, 2, 3, 4]
    assert spread_indices(10_000, 3) == [0, 5000, 9999]
    labels = np.repeat(np.arange(8), 125)  # a class-sorted folder: 8 classes of 125
    assert sorted(labels[spread_indices(len(labels), 8)].tolist()) == list(range(8))


def test_eval_every_needs_held_out_images(tmp_path, tiny_npz, cache_path):
    with pytest.raises(ValueError, match="--eval-data"):
        train(_cfg(tiny_npz, cache_path, tmp_path / "x", max_steps=1, eval_every=1))


def test_heldout_score_and_grid_are_the_held_out_images(tmp_path, tiny_npz, cache_path, cifar_npz):
    """The logged held-out rank/top-1 equals sampling the exported EMA model by hand at the same keys and ranking by
    hand; the grid's input column is the held-out images, spread over the test split."""
    spec, n = f"{cifar_npz}:test", 6
    out = tmp_path / "run"
    train(_cfg(tiny_npz, cache_path, out, max_steps=2, eval_every=2, eval_images=n, eval_data=spec,
               sample_every=2, sample_steps=2), "t")
    logged = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [2] and logged[0]["num_images"] == n

    pipe = RCDMPipeline.from_pretrained(out / "pipeline")  # the EMA weights at step 2, in float32
    ds = open_dataset(spec)
    keys = spread_indices(len(ds), n)
    images = [ds[k][0] for k in keys]
    h = pipe.encoder.encode(to_pil(torch.stack([x.float() / 255 for x in images])))
    x_hat = sample(pipe, h, keys=keys, run=Sampling(steps=2, seed=0))
    sim = F.normalize(pipe.encoder.encode(x_hat), dim=1) @ F.normalize(h, dim=1).t()  # (n, n)
    ranks = 1 + (sim > sim.diag()[:, None]).sum(1)
    assert logged[0]["heldout_mean_rank"] == pytest.approx(ranks.double().mean().item(), abs=1e-9)
    assert logged[0]["heldout_top1_pct"] == pytest.approx(100 * (ranks == 1).double().mean().item(), abs=1e-9)

    grid = np.asarray(Image.open(out / "samples" / "step-0000002.png"))  # rows of (input, 5 samples), 2 px padding
    for r, x in enumerate(images):
        cell = grid[2 + r * 34: 34 + r * 34, 2:34].astype(int)
        want = resize_center_crop(x, 32).permute(1, 2, 0).numpy().astype(int)
        assert np.abs(cell - want).max() <= 1, f"grid row {r} is not held-out image {keys[r]}"
