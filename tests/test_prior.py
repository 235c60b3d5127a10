"""The diffusion prior p(h) (rcdm.prior): it learns a known distribution, saves and reloads, and drives
unconditional sampling end to end."""
import json

import pytest
import torch

from conftest import make_tiny_pipeline
from rcdm import RCDMPipeline
from rcdm.cache import EmbeddingCache
from rcdm.prior import Prior, PriorConfig, PriorMLP, evaluate_prior
from rcdm.training.prior import install, train_prior

MEANS = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 4.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def write_cache(path, feats, labels, layer="backbone"):
    """An `rcdm embed`-format cache holding given embeddings (one view each)."""
    meta = {"encoder": {"spec": "test", "layer": layer, "dim": feats.shape[1]}, "data": "synthetic",
            "fingerprint": "0", "views": ["identity"], "num_bad": 0}
    EmbeddingCache(feats[:, None], torch.arange(len(feats)), labels, meta).save(path)
    return path


@pytest.fixture(scope="module")
def gmm_prior(tmp_path_factory):
    """A prior trained by `train_prior` on a 2-D mixture of three Gaussians (std 0.5), weights 0.5 / 0.3 / 0.2."""
    g = torch.Generator().manual_seed(0)
    comp = torch.multinomial(WEIGHTS, 20000, replacement=True, generator=g)
    feats = MEANS[comp] + 0.5 * torch.randn(20000, 2, generator=g)
    d = tmp_path_factory.mktemp("gmm")
    cache = write_cache(d / "gmm.safetensors", feats, comp)
    cfg = PriorConfig(cache=str(cache), output_dir=str(d / "run"), width=64, num_blocks=2, lr=2e-3, max_steps=800,
                      warmup_steps=20, checkpoint_every=400, log_every=400)
    return train_prior(cfg, "test"), cache


@pytest.mark.slow
def test_prior_learns_a_gaussian_mixture(gmm_prior):
    prior = Prior.from_pretrained(gmm_prior[0])
    h = prior.sample(4000, torch.Generator().manual_seed(1), steps=50)  # (4000, 2)
    nearest = torch.cdist(h, MEANS).argmin(1)
    weights = torch.bincount(nearest, minlength=3) / len(h)
    # measured for this seed and budget: weights 0.45 / 0.30 / 0.25, means within 0.36 of the truth
    assert (weights - WEIGHTS).abs().max() < 0.1, weights
    means = torch.stack([h[nearest == k].mean(0) for k in range(3)])
    assert (means - MEANS).abs().max() < 0.6, means
    assert h.std() < 10  # no divergence: x0 clipping at high t keeps the sampler stable


@pytest.mark.slow
def test_prior_runs_on_the_training_runtime(gmm_prior):
    """The denoiser's loop skeleton: the loss is read only at log steps (the loss window), the checkpoints are the
    runtime's, and prior_info's final loss is the last log line's."""
    out, _ = gmm_prior
    run = out.parent
    lines = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [400, 800]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-400", "checkpoint-800"]
    assert json.loads((out / "prior_info.json").read_text())["final_loss"] == pytest.approx(lines[-1]["loss"])


@pytest.mark.slow
def test_prior_evaluation_reports_fd_beside_calibration_and_class_histogram(gmm_prior):
    out, cache = gmm_prior
    res = evaluate_prior(Prior.from_pretrained(out), str(cache), n=1000, seed=0)
    assert res["fd_samples_vs_real"] < 10 * res["fd_real_vs_real"] + 0.05  # near the real-vs-real noise floor
    assert sum(res["class_histogram_samples"]) == pytest.approx(1.0)
    assert res["class_histogram_real"] == pytest.approx(WEIGHTS.tolist(), abs=0.02)
    assert max(abs(a - b) for a, b in zip(res["class_histogram_samples"], res["class_histogram_real"])) < 0.1


@pytest.mark.slow
def test_save_load_same_seed_same_embeddings(gmm_prior, tmp_path):
    prior = Prior.from_pretrained(gmm_prior[0])
    a = prior.sample(8, torch.Generator().manual_seed(3), steps=10)
    prior.save_pretrained(tmp_path / "copy")
    b = Prior.from_pretrained(tmp_path / "copy").sample(8, torch.Generator().manual_seed(3), steps=10)
    assert torch.equal(a, b) and not torch.equal(a, prior.sample(8, torch.Generator().manual_seed(4), steps=10))
    near = torch.tensor([3.0, 0.0])
    close = prior.sample(64, torch.Generator().manual_seed(0), steps=20, near=near, strength=0.3)
    far = prior.sample(64, torch.Generator().manual_seed(0), steps=20, near=near, strength=1.0)
    assert (close - near).norm(dim=1).mean() < (far - near).norm(dim=1).mean()  # strength moves towards `near`
    assert torch.equal(prior.sample(2, None, steps=10, near=near, strength=0.0), near.expand(2, -1))


def test_unconditional_sampling_end_to_end(tmp_path, tiny_encoder_dir, capsys):
    from rcdm.cli import main

    pipe_dir = make_tiny_pipeline(tmp_path / "tiny", tiny_encoder_dir)
    enc = RCDMPipeline.from_pretrained(pipe_dir).encoder
    feats = torch.rand(512, enc.dim)  # a stand-in for the model's embedding cache
    cache = write_cache(tmp_path / "c.safetensors", feats, torch.zeros(512, dtype=torch.long))
    assert main(["train-prior", "--cache", str(cache), "--output-dir", str(tmp_path / "p"), "--width", "32",
                 "--num-blocks", "1", "--max-steps", "3", "--eval-n", "16", "--model", str(pipe_dir)]) == 0
    info = json.loads((pipe_dir / "prior" / "prior_info.json").read_text())
    assert info["steps"] == 3 and "fd_real_vs_real" in info["evaluation"]
    pipe = RCDMPipeline.from_pretrained(pipe_dir)
    assert pipe.prior is not None and pipe.prior.dim == enc.dim
    out = pipe(num_samples=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (3, 3, 32, 32) and out.embeddings.shape == (3, enc.dim)
    grid = tmp_path / "dream.png"
    assert main(["sample", "--model", str(pipe_dir), "--unconditional", "4", "--steps", "2", "--out", str(grid)]) == 0
    assert grid.is_file() and "4 samples from the prior" in capsys.readouterr().out
    pipe.save_pretrained(pipe_dir)  # the prior is not the pipeline's to delete
    assert (pipe_dir / "prior" / "config.json").is_file()


def test_wrong_dimension_prior_is_refused(tmp_path, tiny_encoder_dir):
    pipe_dir = make_tiny_pipeline(tmp_path / "tiny", tiny_encoder_dir)
    pipe = RCDMPipeline.from_pretrained(pipe_dir)
    with pytest.raises(ValueError, match="draws 7-d embeddings but this denoiser takes 64-d"):
        pipe.set_prior(Prior(PriorMLP(7, width=16, num_blocks=1)))
    other = tmp_path / "other"
    Prior(PriorMLP(16, width=16, num_blocks=1)).save_pretrained(other, {"encoder": {"layer": "projector", "dim": 16}})
    with pytest.raises(ValueError, match="cannot go with"):
        install(other, pipe_dir)
    with pytest.raises(ValueError, match="no prior"):
        pipe(num_samples=1, num_inference_steps=1)
