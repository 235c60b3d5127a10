"""Fidelity metrics (rcdm.metrics) and `rcdm evaluate` (rcdm.evaluate): known answers on oracles, chance levels,
batch-size invariance, and an end-to-end run of the tiny pipeline on CIFAR-10 test images."""
import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from rcdm import Sampling
from rcdm import metrics as M
from rcdm.data import open_dataset
from rcdm.evaluate import evaluate, read_references
from rcdm.images import to_uint8
from rcdm.pipeline import RCDMPipeline, RCDMPipelineOutput
from rcdm.sampling import sample_generators


@pytest.fixture(scope="module")
def test_spec(cifar_npz):
    return f"{cifar_npz}:test"


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory, cifar_test_images):
    """An ImageFolder of the 16 first test images, one directory per CIFAR label ("0".."9", sorted = label)."""
    root = tmp_path_factory.mktemp("train")
    images, labels = cifar_test_images
    assert sorted(set(labels)) == list(range(10))  # the npz is class-interleaved: all classes in 16 items
    for i, (img, y) in enumerate(zip(images, labels)):
        (root / str(y)).mkdir(exist_ok=True)
        img.save(root / str(y) / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------------ rank
def test_rank_hand_example_with_tie():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    hat = torch.tensor([[0.9, 0.1],  # nearest to its own ref 0: rank 1
                        [1.0, 0.2],  # ref 0 is closer than its own ref 1: rank 2
                        [0.0, 1.0]])  # own ref 2 at cos 0, ref 1 at cos 1 (counts), ref 0 at cos 0 (tie, not counted)
    assert M.sample_ranks(ref, hat).tolist() == [1, 2, 2]
    s = M.rank_stats(ref, hat)
    assert s["mean"] == pytest.approx(5 / 3) and s["median"] == 2 and s["top1_pct"] == pytest.approx(100 / 3)


def test_rank_oracle_is_one_for_every_sample():
    h = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    hat = h.repeat_interleave(3, 0) + 1e-4 * torch.randn(150, 16, generator=torch.Generator().manual_seed(1))
    s = M.rank_stats(h, hat)
    assert s["mean"] == 1.0 and s["median"] == 1.0 and s["top1_pct"] == 100.0 and s["top5_pct"] == 100.0


def test_rank_shuffled_pairing_is_chance():
    # Pair each sample with the wrong reference (a derangement: roll by one). Sample i is then an exact copy of
    # h_{i-1}, which always beats h_i, and h_i lands uniformly among the other N-2 random references, so
    # E[rank] = 2 + (N - 2) / 2 = (N + 2) / 2 = 101. A rank uniform on 2..N has sd (N - 2) / sqrt(12) = 57, so
    # the mean of 200 has sd of about 4: +-15 is a 3.7-sigma band, far from the oracle's 1.
    n = 200
    h = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    s = M.rank_stats(h, h.roll(1, 0))
    assert abs(s["mean"] - (n + 2) / 2) < 15
    assert s["top1_pct"] == 0.0
    assert s["chance_mean"] == (n + 1) / 2


def test_rank_rejects_uneven_groups():
    with pytest.raises(ValueError, match="evenly"):
        M.sample_ranks(torch.randn(4, 3), torch.randn(7, 3))


def test_block_size_does_not_change_results(monkeypatch):
    g = torch.Generator().manual_seed(0)
    ref, hat, train = torch.randn(40, 8, generator=g), torch.randn(80, 8, generator=g), torch.randn(60, 8, generator=g)
    labels = torch.arange(60) % 4
    full = M.sample_ranks(ref, hat), M.knn_predict(train, labels, hat)
    monkeypatch.setattr(M, "_CHUNK", 7)
    blocked = M.sample_ranks(ref, hat), M.knn_predict(train, labels, hat)
    assert all(torch.equal(a, b) for a, b in zip(full, blocked))


# ------------------------------------------------------------------------------------------------ FD
def test_frechet_distance_matches_scipy_sqrtm():
    from scipy import linalg

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g) + 0.5
    an, bn = a.double().numpy(), b.double().numpy()
    ca, cb = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    ref = ((an.mean(0) - bn.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_singular():
    x = torch.randn(10, 40, generator=torch.Generator().manual_seed(0))  # n < D: singular covariance
    assert M.frechet_distance(x, x) < 1e-9 * x.var(0).sum().item()


def test_fd_oracle_zero_and_noise_large(pipe, cifar_npz):
    from rcdm.data import NpzImages

    ds = NpzImages(str(cifar_npz), "test")
    n = 256  # FD's small-sample bias shrinks like 1/n; at 16 images the untrained tiny encoder cannot tell noise apart
    real = pipe.encode(torch.stack([ds[i][0] for i in range(n)]))  # (n, 64); uint8 is accepted
    noise = pipe.encode(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    s = M.fd_stats(real, real)
    assert s["samples_vs_real"] < 1e-9 and s["real_half_vs_half"] > 0
    # Noise must look far less like the real set than one half of the real set does like the other (measured 8x).
    assert M.frechet_distance(noise, real) > 4 * s["real_half_vs_half"]


# ------------------------------------------------------------------------------------------------ diversity
def test_diversity_known_values_and_resolution_independence():
    black, white = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    samples = torch.stack([black, white, black, black])  # two groups of K = 2
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])  # orthogonal pair, then a parallel one
    assert M.group_pixel_rms(samples, 2).tolist() == [1.0, 0.0]
    assert M.group_cosine_spread(feats, 2).tolist() == pytest.approx([1.0, 0.0])
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    up = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # the same images at 4x the resolution
    assert M.group_pixel_rms(up, 3) == pytest.approx(M.group_pixel_rms(x, 3), rel=1e-12)
    assert M.diversity(x, torch.randn(6, 4), 1) == {"pixel_rms": None, "feature_cosine": None}


# ------------------------------------------------------------------------------------------------ kNN
def _knn_by_hand(tr, ytr, q, k, t):
    """Weighted kNN (Wu et al. 2018) written out per query, in float64, as the oracle for the blocked version."""
    out = []
    for x in q.double():
        sims = [float(x @ r.double() / (x.norm() * r.double().norm())) for r in tr]
        votes: dict[int, float] = {}
        for j in sorted(range(len(tr)), key=lambda j: -sims[j])[:k]:
            votes[int(ytr[j])] = votes.get(int(ytr[j]), 0.0) + np.exp(sims[j] / t)
        out.append(max(votes, key=votes.get))
    return out


def test_knn_predict_matches_a_hand_written_weighted_knn():
    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(5, 16, generator=g)
    ytr, yte = torch.arange(200) % 5, torch.arange(40) % 5
    tr = centers[ytr] + 4 * torch.randn(200, 16, generator=g)  # overlapping classes: the vote weights matter
    te = centers[yte] + 6 * torch.randn(40, 16, generator=g)
    for k, t in [(20, 0.07), (5, 1.0), (500, 0.5)]:  # 500 > 200: k is capped at the training set
        assert M.knn_predict(tr, ytr, te, k, t).tolist() == _knn_by_hand(tr, ytr, te, min(k, 200), t)
    acc = (M.knn_predict(tr, ytr, te) == yte).double().mean().item()
    assert 0.4 < acc < 1.0  # neither trivial nor chance (0.2): the data tests the voting, not a corner case
    s = M.class_agreement(tr, ytr, te, te.repeat_interleave(2, 0), yte)
    assert s["samples"] == s["real"] == pytest.approx(acc)


# ------------------------------------------------------------------------------------------------ sampling
def test_sample_generators_depend_only_on_seed_index_and_sample():
    def first_draws(gens):
        return [torch.randn(1, generator=g).item() for g in gens]

    both = first_draws(sample_generators(0, [5, 6], 2))
    assert both == first_draws(sample_generators(0, [5], 2)) + first_draws(sample_generators(0, [6], 2))
    assert len(set(both)) == 4 and both != first_draws(sample_generators(1, [5, 6], 2))


@pytest.mark.parametrize("name", ["ddim", "ddpm"])  # DDPM also draws fresh noise at every step
def test_pipeline_samples_do_not_depend_on_batch(pipe, name):
    h = pipe.encode(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    kw = dict(num_samples=1, num_inference_steps=3, scheduler=name, output_type="pt")
    together = pipe(embeddings=h, generator=sample_generators(0, range(4), 1), **kw).images
    alone = torch.cat([pipe(embeddings=h[i : i + 1], generator=sample_generators(0, [i], 1), **kw).images
                       for i in range(4)])
    # Same noise by construction; what is left is float round-off of batched convolutions (measured ~1e-6).
    assert (together - alone).abs().max() < 1e-4


def test_to_uint8_rounds_like_the_pipelines_own_output(pipe):
    h = torch.randn(2, pipe.encoder.dim, generator=torch.Generator().manual_seed(0)).abs()
    kw = dict(embeddings=h, num_inference_steps=1)
    pt = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images
    arr = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **kw).images  # (2, R, R, 3) uint8
    assert torch.equal(to_uint8(pt), torch.from_numpy(arr).permute(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------------ evaluate
class OraclePipeline(RCDMPipeline):
    """A perfect RCDM: every 'sample' of an embedding is the reference image that produced it."""

    def set_references(self, images):
        self.table_x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]) / 255
        self.table_h = self.encode(images)

    def __call__(self, embeddings=None, num_samples=1, **kwargs):
        idx = torch.cdist(embeddings.float(), self.table_h).argmin(1)
        return RCDMPipelineOutput(images=self.table_x[idx].repeat_interleave(num_samples, 0), embeddings=embeddings)


@pytest.mark.parametrize("judge_layer", [None, "projector"])  # None: judged by the conditioning encoder itself
def test_evaluate_oracle_is_perfect(tiny_pipeline_dir, tiny_encoder_dir, cifar_test_images, test_spec, train_folder,
                                    judge_layer):
    from rcdm import load_encoder

    oracle = OraclePipeline.from_pretrained(tiny_pipeline_dir)
    oracle.set_references(cifar_test_images[0][:8])
    judge = load_encoder(f"file:{tiny_encoder_dir}", judge_layer) if judge_layer else None
    m = evaluate(oracle, test_spec, 8, Sampling(steps=2), judge=judge, train_data=str(train_folder), progress=False)
    assert m["judge"]["layer"] == (judge_layer or "backbone") and m["judge"]["dim"] == (16 if judge_layer else 64)
    assert m["rank"]["mean"] == 1.0 and m["rank"]["top1_pct"] == 100.0
    assert m["fd"]["samples_vs_real"] < 1e-6 * m["fd"]["real_half_vs_half"]
    assert m["class_agreement"]["samples"] == m["class_agreement"]["real"]
    assert m["class_agreement"]["num_train"] == 16


def test_evaluate_end_to_end_batch_invariant(pipe, test_spec, train_folder, tmp_path):
    run = Sampling(samples_per_image=2, steps=2, scheduler="ddpm", seed=3)
    kw = dict(train_data=str(train_folder), progress=False)
    scheduler_before = type(pipe.scheduler)
    a = evaluate(pipe, test_spec, 8, replace(run, batch_size=2), summary_png=str(tmp_path / "s.png"), **kw)
    b = evaluate(pipe, test_spec, 8, replace(run, batch_size=16), **kw)
    assert type(pipe.scheduler) is scheduler_before  # the run names its sampler per call: the pipeline keeps its own
    assert a["per_image"] == b["per_image"] and a["rank"] == b["rank"] and a["class_agreement"] == b["class_agreement"]
    for key in ("fd", "diversity"):
        assert a[key] == pytest.approx(b[key], rel=1e-5)
    assert a["num_images"] == 8 and a["per_image"]["index"] == list(range(8))
    assert np.shape(a["per_image"]["rank"]) == (8, 2) and a["sampling"]["nfe"] == 2
    assert 0 < a["diversity"]["pixel_rms"] <= 1 and a["class_agreement"]["k"] == 16
    assert a["inception"] == {"skipped": "no --inception-weights given (Inception-v3 weights are never downloaded)"}
    assert (tmp_path / "s.png").stat().st_size > 1000
    json.dumps(a)  # serialisable as is


def test_evaluate_offset_picks_later_references_and_refuses_out_of_range(pipe, test_spec, cifar_test_images):
    m = evaluate(pipe, test_spec, 3, Sampling(steps=1), offset=5, progress=False)
    assert m["offset"] == 5 and m["per_image"]["index"] == [5, 6, 7]
    assert m["per_image"]["label"] == cifar_test_images[1][5:8]
    n = len(open_dataset(test_spec, "test"))
    for bad in (-1, n):
        with pytest.raises(ValueError, match=f"offset {bad} is outside the data's {n} items"):
            evaluate(pipe, test_spec, 3, Sampling(steps=1), offset=bad, progress=False)
    with pytest.raises(ValueError, match="holds no readable images"):  # not an offset error at the default 0
        read_references(torch.utils.data.Subset(open_dataset(test_spec, "test"), []), 3, [pipe.encoder])


def test_evaluate_class_agreement_from_embedding_cache(pipe, test_spec, train_folder, tmp_path):
    from rcdm.cache import build_cache

    build_cache(pipe.encoder, str(train_folder), progress=False).save(tmp_path / "train.safetensors")
    kw = dict(run=Sampling(steps=1), progress=False)
    from_cache = evaluate(pipe, test_spec, 4, train_data=str(tmp_path / "train.safetensors"), **kw)
    from_images = evaluate(pipe, test_spec, 4, train_data=str(train_folder), **kw)
    assert from_cache["class_agreement"] == pytest.approx(from_images["class_agreement"])


def test_inception_skipped_without_torchmetrics(pipe, test_spec, tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"not used")
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # makes `import torchmetrics...` raise ImportError
    m = evaluate(pipe, test_spec, 2, Sampling(steps=1), inception_weights=str(weights), progress=False)
    assert "torchmetrics" in m["inception"]["skipped"] and "pip install 'rcdm[metrics]'" in m["inception"]["skipped"]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_evaluate_smoke(tiny_pipeline_dir, tiny_encoder_dir, test_spec, tmp_path, capsys):
    from rcdm.cli import main

    out, png = tmp_path / "m.json", tmp_path / "m.png"
    code = main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", test_spec, "--num-images", "4",
                 "--num-samples", "2", "--num-inference-steps", "2", "--scheduler", "ddim", "--device", "cpu",
                 "--judge", f"file:{tiny_encoder_dir}", "--judge-layer", "projector",
                 "--out", str(out), "--summary-png", str(png)])
    assert code == 0 and png.is_file() and "mean rank" in capsys.readouterr().out
    m = json.loads(out.read_text())
    assert m["format"] == "rcdm-metrics/1" and m["cli"]["num_images"] == 4 and m["sampling"]["num_samples"] == 2
    assert m["judge"]["layer"] == "projector" and m["model"]["encoder"]["layer"] == "backbone"
    missing = main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", test_spec, "--num-images", "2",
                    "--inception-weights", str(tmp_path / "nope.pth"), "--out", str(out)])
    assert missing == 2 and "nope.pth" in capsys.readouterr().err
    past_end = main(["evaluate", "--model", str(tiny_pipeline_dir), "--data", test_spec, "--offset", "10000000",
                     "--out", str(out)])
    assert past_end == 2 and "offset 10000000 is outside" in capsys.readouterr().err


def test_cli_evaluate_every_flag_has_help():
    from rcdm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["evaluate"]
    flags = [a for a in sub._actions if a.dest != "help"]
    assert all(a.help for a in flags)
    names = {o for a in flags for o in a.option_strings}
    assert names >= {"--model", "--data", "--num-images", "--offset", "--num-samples", "--num-inference-steps",
                     "--scheduler", "--guidance-scale", "--seed", "--judge", "--judge-layer", "--train-data",
                     "--inception-weights", "--out", "--summary-png"}
