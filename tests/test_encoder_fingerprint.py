"""Never condition on a different network (issue 15, item 7): random-init encoders are refused for embedding, and
the encoder's weights are fingerprinted in the cache and the pipeline, so a changed network is caught at load time."""
import json
import shutil

import pytest
import torch

from conftest import make_tiny_encoder, make_tiny_pipeline
from rcdm import RCDMPipeline, RCDMUNet
from rcdm.cache import EmbeddingCache, build_cache
from rcdm.cli import main as cli_main
from rcdm.encoders import load_encoder
from rcdm.model import UNetConfig
from rcdm.schedulers import make_scheduler, training_scheduler
from rcdm.train import TrainConfig, train


@pytest.fixture
def own_encoder(tmp_path, tiny_encoder_dir):
    """A private copy of the tiny encoder, free to be overwritten."""
    return shutil.copytree(tiny_encoder_dir, tmp_path / "enc")


def test_fingerprint_follows_the_weights_not_the_spec(own_encoder, tmp_path):
    a = load_encoder(f"file:{own_encoder}")
    assert a.fingerprint() == load_encoder(f"file:{own_encoder}").fingerprint()  # deterministic
    assert a.config()["fingerprint"] == a.fingerprint() and len(a.fingerprint()) == 64
    other = make_tiny_encoder(tmp_path / "other", seed=1)
    assert load_encoder(f"file:{other}").fingerprint() != a.fingerprint()
    with torch.no_grad():
        next(a.parameters()).view(-1)[0] += 1e-6  # one weight, barely
    assert a.fingerprint() != load_encoder(f"file:{own_encoder}").fingerprint()


def test_random_init_encoder_is_refused_for_embedding(tmp_path, tiny_npz, tiny_encoder_dir, capsys):
    enc = load_encoder("torchvision:resnet18")
    assert enc.random_init and not load_encoder(f"file:{tiny_encoder_dir}").random_init
    with pytest.raises(ValueError, match="random weights.*torchvision:resnet18@weights.pth"):
        build_cache(enc, str(tiny_npz), progress=False)
    out = tmp_path / "emb.safetensors"
    assert cli_main(["embed", "--encoder", "torchvision:resnet18", "--data", str(tiny_npz), "--out", str(out)]) == 2
    assert "random weights" in capsys.readouterr().err and not out.exists()


def test_timm_random_init_is_marked(tmp_path):
    pytest.importorskip("timm")
    assert load_encoder("timm:test_vit").random_init


def test_changed_encoder_weights_are_caught_by_training_and_the_pipeline(own_encoder, tmp_path, tiny_npz):
    cache = tmp_path / "emb.safetensors"
    assert cli_main(["embed", "--encoder", f"file:{own_encoder}", "--data", str(tiny_npz), "--out", str(cache)]) == 0
    recorded = EmbeddingCache.load(cache).meta["encoder"]["fingerprint"]
    pipe_dir = make_tiny_pipeline(tmp_path / "pipe", own_encoder)
    meta = json.loads((pipe_dir / "rcdm_pipeline.json").read_text())
    assert meta["encoder"]["fingerprint"] == recorded == load_encoder(f"file:{own_encoder}").fingerprint()
    RCDMPipeline.from_pretrained(pipe_dir)  # unchanged: loads

    for enc in (own_encoder, pipe_dir / "encoder"):  # the original and the copy the model carries
        make_tiny_encoder(enc, seed=1)  # same spec, same architecture, other weights
    with pytest.raises(ValueError, match="other weights than the ones this denoiser was trained on"):
        RCDMPipeline.from_pretrained(pipe_dir)
    with pytest.raises(ValueError, match="other weights than the ones this denoiser was trained on"):
        RCDMPipeline.from_pretrained(pipe_dir, encoder=load_encoder(f"file:{own_encoder}"))
    cfg = TrainConfig(data=str(tiny_npz), cache=str(cache), output_dir=str(tmp_path / "run"), batch_size=8,
                      max_steps=1, sample_every=0, unet=UNetConfig(block_out_channels=(16, 32), norm_num_groups=8,
                                                                   layers_per_block=1))
    with pytest.raises(ValueError, match="other weights than the ones this cache was made with.*rcdm embed"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_random_init_pipeline_never_loads_silently(tmp_path):
    """The measured failure: a torchvision:ARCH pipeline rebuilt its encoder from a fresh random init on load."""
    encoder = load_encoder("torchvision:resnet18")
    torch.manual_seed(0)
    unet = RCDMUNet(embedding_dim=encoder.dim, sample_size=32, block_out_channels=(16, 32), layers_per_block=1,
                    norm_num_groups=8, attention_head_dim=8)
    RCDMPipeline(unet=unet, scheduler=make_scheduler("ddim", training_scheduler().config),
                 encoder=encoder).save_pretrained(tmp_path / "random")
    with pytest.raises(ValueError, match="random init"):
        RCDMPipeline.from_pretrained(tmp_path / "random")


def test_models_recorded_without_a_fingerprint_still_load(tiny_pipeline_dir, tmp_path):
    """The shipped models predate fingerprints: nothing to check, so they load as before."""
    old = shutil.copytree(tiny_pipeline_dir, tmp_path / "old")
    meta = json.loads((old / "rcdm_pipeline.json").read_text())
    del meta["encoder"]["fingerprint"]
    (old / "rcdm_pipeline.json").write_text(json.dumps(meta))
    assert RCDMPipeline.from_pretrained(old).encoder.dim == meta["encoder"]["dim"]
