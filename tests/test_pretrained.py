"""The shipped CIFAR-10 models: they load with no flags, sample at the documented settings, and are faithful."""
import json

import pytest
import torch

from rcdm import RCDMPipeline, Sampling, load_encoder
from rcdm.evaluate import evaluate
from rcdm.pipeline import pretrained_root, read_meta
from rcdm.schedulers import SCHEDULERS

pytestmark = pytest.mark.slow  # the shipped models, sampled and evaluated at full size

ROOT = pretrained_root()
MODELS = {"rcdm-cifar10-backbone": ("backbone", 256), "rcdm-cifar10-projector": ("projector", 128)}
# Mean rank of 50 held-out test images with one sample each at the model's recorded default (ddim-logsnr-20 since
# session 17, DDIM-20 from session 11; no guidance); chance is 25.5. Measured on these 50 (float32, this test's call)
# with ddim-logsnr-20: backbone (stint 21) 1.02, projector 1.10 (DDIM-20, before: 1.02 and 1.14; their 200-image
# bf16 scores, seed 0: 1.17 / 92.0% and 1.78 / 72.0%). The thresholds leave a ~1.8-1.9x margin
# for platform round-off, yet a model that ignores its embedding (about 25), a broken loader or a broken recorded
# sampler fails them.
MAX_MEAN_RANK_50 = {"rcdm-cifar10-backbone": 2.0, "rcdm-cifar10-projector": 2.0}


@pytest.mark.parametrize("name", list(MODELS))
def test_shipped_model_loads_and_samples(name):
    pipe = RCDMPipeline.from_pretrained(name)
    layer, dim = MODELS[name]
    assert pipe.encoder.layer == layer and pipe.encoder.dim == dim and pipe.resolution == 32
    pipe.set_progress_bar_config(disable=True)
    imgs = sorted((ROOT / "examples").glob("*.png"))
    assert len(imgs) >= 4, "pretrained/examples should ship a handful of CIFAR-10 test images"
    out = pipe(images=[str(p) for p in imgs[:2]], num_samples=2, num_inference_steps=20,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    x = out.images
    assert x.shape == (4, 3, 32, 32) and x.std() > 0.05  # real images, not a flat colour


def test_default_is_the_backbone_model():
    assert RCDMPipeline.from_pretrained().encoder.layer == "backbone"


@pytest.mark.parametrize("layer, dim", [("backbone", 256), ("projector", 128)])
def test_encoder_spec_dims(layer, dim):
    enc = load_encoder(f"file:{ROOT / 'simclr-cifar10-r18w32'}", layer)
    assert enc.dim == dim
    cfg = json.loads((ROOT / "simclr-cifar10-r18w32" / "config.json").read_text())
    assert cfg["preprocess"]["size"] == 32


@pytest.mark.parametrize("name", list(MAX_MEAN_RANK_50))
def test_shipped_model_is_far_better_than_chance_at_its_defaults(name, cifar_npz):
    pipe = RCDMPipeline.from_pretrained(name)
    m = evaluate(pipe, f"{cifar_npz}:test", 50, Sampling(seed=0), progress=False)  # the recorded sampler
    recorded = read_meta(name)["sampling"]
    assert {k: m["sampling"][k] for k in recorded} == recorded == pipe.sampling_defaults
    assert m["rank"]["mean"] <= MAX_MEAN_RANK_50[name], m["rank"]


@pytest.mark.parametrize("name", list(MODELS))
def test_card_states_the_recorded_training(name):
    """The card's stint table ends at the total the model records, so a new stint cannot ship with a stale card."""
    total = sum(h["steps"] for h in read_meta(name)["training"]["history"])
    card = (ROOT / name / "README.md").read_text()
    assert f"= {total:,} |" in card, f"{name}/README.md: stint table should end at {total:,}"


@pytest.mark.parametrize("name", list(MODELS))
def test_card_states_the_recorded_sampler(name):
    """The card names the sampler the pipeline records, so switching the default cannot leave the card stale."""
    meta = read_meta(name)
    steps = meta["sampling"]["num_inference_steps"]
    stated = f"Sampler recorded in the pipeline: **{meta['sampling']['scheduler'].upper()}, {steps} steps**"
    assert stated in (ROOT / name / "README.md").read_text(), f"{name}/README.md should say: {stated}"


@pytest.mark.parametrize("name", list(MODELS))
def test_scheduler_config_names_the_recorded_sampler(name):
    """rcdm's loader reads the record, but `DDIMScheduler.from_pretrained(..., subfolder="scheduler")` by hand reads
    scheduler_config.json: both must name the same sampler (a stint installed by hand once left them disagreeing)."""
    recorded = read_meta(name)["sampling"]["scheduler"]
    config = json.loads((ROOT / name / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == SCHEDULERS[recorded][0].__name__, (name, recorded, config["_class_name"])


def test_encoder_card_states_the_recorded_knn():
    """The encoder card quotes the kNN top-1 its last stint recorded, which meets the 60% backbone goal."""
    stints = json.loads((ROOT / "simclr-cifar10-r18w32" / "config.json").read_text())["training"]["stints"]
    card = (ROOT / "simclr-cifar10-r18w32" / "README.md").read_text()
    knn = stints[-1]["knn"]
    for layer in ("backbone", "projector"):
        assert f"{100 * knn[f'trained_{layer}']:.2f}%" in card, f"encoder card: stale kNN for the {layer}"
    assert knn["trained_backbone"] >= 0.60
