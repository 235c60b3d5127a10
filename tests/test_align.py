"""REPA (rcdm.align): the alignment loss, the encoder's spatial target, and a training run that uses them."""
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_train_config
from rcdm import RCDMPipeline
from rcdm.align import SpatialTarget, alignment_loss
from rcdm.encoders import load_encoder
from rcdm.model import RCDMUNet
from rcdm.train import train


def test_alignment_loss_is_one_minus_cosine_per_location_after_pooling():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 5, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    pooled = F.avg_pool2d(pred, 2)  # the 8x8 map averaged down to the target's 4x4
    want = torch.stack([1 - torch.dot(pooled[b, :, y, x], target[b, :, y, x]) /
                        (pooled[b, :, y, x].norm() * target[b, :, y, x].norm())
                        for b in range(2) for y in range(4) for x in range(4)]).mean()
    torch.testing.assert_close(alignment_loss(pred, target), want, atol=1e-6, rtol=1e-6)
    assert alignment_loss(target, 3 * target).abs() < 1e-6  # scale-free, 0 when aligned
    assert alignment_loss(target, -target) == pytest.approx(2.0, abs=1e-6)


def test_spatial_target_is_the_encoder_stage_output(tiny_encoder_dir):
    enc = load_encoder(f"file:{tiny_encoder_dir}")
    target = SpatialTarget(enc, "backbone.layer4")
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    fmap = target(x0)
    assert fmap.shape == (2, target.channels, 4, 4)
    # its spatial mean is the backbone embedding: the same forward, read before the pooling
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), enc((x0 + 1) / 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no such module"):
        SpatialTarget(enc, "backbone.layer9")
    with pytest.raises(ValueError, match="not a \\(B, C, h, w\\)"):
        SpatialTarget(enc, "projector")


def test_align_head_runs_in_training_only_and_leaves_the_prediction_alone():
    torch.manual_seed(0)
    unet = RCDMUNet(embedding_dim=6, block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1)
    grown = unet.with_align_head(12)
    x, t, h = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.randn(2, 6)
    with torch.no_grad():
        out = grown.train()(x, t, h)
        assert out.align.shape == (2, 12, 16, 16)  # the mid-block of a 2-level UNet works at 16x16
        torch.testing.assert_close(out.sample, unet.train()(x, t, h).sample)
        assert grown.eval()(x, t, h).align is None


def test_training_with_repa_learns_the_alignment_and_exports_a_sampler(tmp_path, tiny_npz, cache_path):
    """With --repa-weight the first step's loss is the plain loss (same weights, same noise) plus weight x (1 - cos)
    of an untrained projector, about 0.5 x 1; the export loads; a run without it has no projector at all."""
    out = train(tiny_train_config(tiny_npz, cache_path, tmp_path / "repa", max_steps=2, repa_weight=0.5), "repa")
    pipe = RCDMPipeline.from_pretrained(out)
    assert pipe.unet.config.align_dim == pipe.encoder.net.backbone.layer4[-1].conv2.out_channels
    assert len(pipe(embeddings=torch.randn(1, pipe.unet.config.embedding_dim), num_inference_steps=2).images) == 1
    plain_out = train(tiny_train_config(tiny_npz, cache_path, tmp_path / "plain", max_steps=2), "plain")
    plain = RCDMPipeline.from_pretrained(plain_out)
    assert plain.unet.align_head is None and plain.unet.config.align_dim == 0
    first = [json.loads((p / "losses.jsonl").read_text().splitlines()[0])["loss"] for p in (out.parent, plain_out.parent)]
    assert 0.25 < first[0] - first[1] < 0.75, first
