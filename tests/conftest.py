"""Test setup: fully offline, deterministic, small thread count."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR_NPZ = REPO / "tests" / "data" / "cifar10_small.npz"  # 1000 train + 1000 test CIFAR-10 images (its README)


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """One intra-op thread for the whole session (RCDM_TEST_THREADS overrides): the nets here are tiny, and on 2
    shared cores a second OpenMP thread makes every op wait on a descheduled thread (a tiny conv net measured
    0.77 s on 2 threads vs 4 ms on 1 while a training job ran). Set once here, not at import time in test files,
    so a test file run alone behaves as in the suite; subprocess tests set their own (OMP_NUM_THREADS)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("RCDM_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cifar_npz():
    """The repository's CIFAR-10 fixture, in the full file's packed-JPEG format: its first 1000 train and first 1000
    test images (class-interleaved, so any prefix of a multiple of 10 is class-balanced)."""
    if not CIFAR_NPZ.exists():
        pytest.fail(f"{CIFAR_NPZ} is missing: rebuild it with tools/make_test_fixture.py (tests/data/README.md)")
    return CIFAR_NPZ


# ------------------------------------------------------------------ tiny models shared by the tests
TINY_UNET = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8)


def make_tiny_encoder(out_dir, seed=0):
    """A width-8 CIFAR ResNet-18 + 64-32-16 projector in the rcdm-native `file:DIR` format."""
    import torch

    from rcdm.ssl import SSLConfig, SSLEncoder, save_encoder

    torch.manual_seed(seed)
    model = SSLEncoder(width=8, proj_hidden=32, proj_out=16).eval()
    save_encoder(model, SSLConfig(data="", out=str(out_dir), width=8, proj_hidden=32, proj_out=16), {})
    return out_dir


def make_tiny_pipeline(out_dir, encoder_dir, layer="backbone", seed=0, **unet_kw):
    """An untrained 32px RCDM on the tiny encoder, saved with `save_pretrained`."""
    import torch

    from rcdm import RCDMPipeline, RCDMUNet, load_encoder
    from rcdm.schedulers import make_scheduler, training_scheduler

    encoder = load_encoder(f"file:{encoder_dir}", layer)
    torch.manual_seed(seed)
    unet = RCDMUNet(embedding_dim=encoder.dim, sample_size=32, **{**TINY_UNET, **unet_kw})
    pipe = RCDMPipeline(unet=unet, scheduler=make_scheduler("ddim", training_scheduler().config), encoder=encoder)
    pipe.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny-encoder")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_encoder_dir):
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-rcdm", tiny_encoder_dir)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    """The tiny pipeline, loaded once per test module (a module may swap its scheduler or dtype), without a bar."""
    from rcdm import RCDMPipeline

    p = RCDMPipeline.from_pretrained(tiny_pipeline_dir)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="session")
def cifar_test_images(cifar_npz):
    """The first 16 CIFAR-10 test images as PIL (class-balanced prefix), with their labels."""
    from rcdm.data import NpzImages, open_image

    ds = NpzImages(str(cifar_npz), "test")
    return [open_image(ds.raw(i)) for i in range(16)], [int(ds.labels[i]) for i in range(16)]


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory, cifar_npz):
    """64 CIFAR-10 test images repacked as a 'train' split in the packed-JPEG npz format."""
    import numpy as np

    z = np.load(cifar_npz)
    off = z["test_offsets"][:65]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, train_jpeg=z["test_jpeg"][: off[-1]], train_offsets=off, train_labels=z["test_labels"][:64],
             class_names=z["class_names"])
    return path


def tiny_train_config(data, cache, out, **kw):
    """A TrainConfig for a seconds-long run of a tiny UNet on `data` with the embedding cache `cache`."""
    from rcdm.model import UNetConfig
    from rcdm.train import TrainConfig

    base = dict(data=str(data), cache=str(cache), output_dir=str(out), batch_size=8, log_every=1,
                sample_every=0, warmup_steps=2, unet=UNetConfig(block_out_channels=(16, 32), norm_num_groups=8,
                                                                layers_per_block=1))
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def cache_path(tmp_path_factory, tiny_npz, tiny_encoder_dir):
    """`rcdm embed` of tiny_npz with the tiny encoder."""
    from rcdm.cli import main as cli_main

    out = tmp_path_factory.mktemp("cache") / "emb.safetensors"
    assert cli_main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--data", str(tiny_npz), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def corrupt_npz(tmp_path_factory, tiny_npz):
    """tiny_npz with the JPEG bytes of item 3 zeroed: one unreadable image of 64."""
    import numpy as np

    z = dict(np.load(tiny_npz))
    buf = z["train_jpeg"].copy()
    buf[z["train_offsets"][3] : z["train_offsets"][4]] = 0
    path = tmp_path_factory.mktemp("bad") / "bad.npz"
    np.savez(path, **{**z, "train_jpeg": buf})
    return path
