"""rcdm.analysis and `rcdm analyze`: oracle pipelines with known answers (identity: the samples ARE the
conditioning image; constant: they ignore it), hand-made banks, and end-to-end runs of tiny models."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from PIL import Image

from rcdm import analysis as A
from rcdm.choices import DEFAULT_SAMPLING
from rcdm.cli import build_parser, main
from rcdm.encoders import EncoderNet, FrozenEncoder, Preprocess
from rcdm.evaluate import Sampling
from rcdm.pipeline import RCDMPipeline

from conftest import make_tiny_pipeline

FAST = Sampling(num_samples=2, num_inference_steps=2, scheduler="ddim", seed=0)


class OraclePipe:
    """An `rcdm.sampling.Sampler` with an encoder, as the analyses take one. Its encoder flattens the 32 px image (an
    invertible embedding), and its samples decode the embedding back to that image (identity) or are mid-grey
    whatever the embedding (constant)."""

    resolution = 32
    sampling_defaults = DEFAULT_SAMPLING
    dtype = torch.float32

    def __init__(self, constant: bool = False):
        net = EncoderNet(nn.Flatten())
        net.register_parameter("anchor", nn.Parameter(torch.zeros(1)))  # FrozenEncoder reads device/dtype from it
        self.encoder = FrozenEncoder(net, "test:flatten", "backbone", Preprocess(32, 32, (0, 0, 0), (1, 1, 1)))
        self.constant = constant

    def __call__(self, embeddings, num_samples, generator=None, output_type="pil", **kwargs):
        assert output_type == "pt" and len(generator) == len(embeddings) * num_samples  # per-sample generators
        x = embeddings.view(-1, 3, 32, 32).repeat_interleave(num_samples, 0)
        return SimpleNamespace(images=torch.full_like(x, 0.5) if self.constant else x.clone())


@pytest.fixture(scope="module")
def proj_dir(tmp_path_factory, tiny_encoder_dir):
    return make_tiny_pipeline(tmp_path_factory.mktemp("proj") / "tiny-proj", tiny_encoder_dir, layer="projector")


@pytest.fixture(scope="module")
def images(cifar_test_images):
    return cifar_test_images[0]


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, images):
    d = tmp_path_factory.mktemp("pngs")
    paths = [str(d / f"{i}.png") for i in range(3)]
    for im, p in zip(images, paths):
        im.save(p)
    return paths


def check_outputs(result, tmp_path, min_size=(200, 150)):
    """The figure is a readable PNG of sensible size and the JSON parses; returns the JSON."""
    png, js = result.save(tmp_path / f"{result.kind}.png")
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        assert im.size[0] <= 4000 and im.size[1] <= 4000
    doc = json.loads(js.read_text())
    assert doc["format"] == "rcdm-analysis/1" and doc["kind"] == result.kind
    return doc


# ------------------------------------------------------------------------------------------------ invariance
def test_invariance_identity_oracle_scores_one_and_constant_zero(images, tmp_path):
    res = A.invariance({"identity": OraclePipe(), "constant": OraclePipe(constant=True)}, images[:6],
                       run=Sampling(num_samples=2, num_inference_steps=1, scheduler=None))
    ident, const = res.numbers["models"]["identity"]["scores"], res.numbers["models"]["constant"]["scores"]
    assert set(ident) == set(A.AUGMENTATIONS) == {"flip", "crop", "hue", "grayscale", "rotation", "blur"}
    for aug in A.AUGMENTATIONS:
        assert ident[aug] == pytest.approx(1.0, abs=1e-6), aug
        assert const[aug] == pytest.approx(0.0, abs=1e-9), aug
        stats = res.numbers["models"]["identity"]["statistics"][aug]
        assert abs(stats["s_tx"] - stats["s_x"]) > 0.05, aug  # every t moves its statistic clearly
    doc = check_outputs(res, tmp_path)
    assert doc["models"]["identity"]["scores"]["blur"] == pytest.approx(1.0, abs=1e-6)


def test_augmentation_statistics_have_the_documented_values(images):
    x = A.encoder_view(images[:4], OraclePipe().encoder)  # (4, 3, 32, 32)
    gray = A.augment("grayscale", x)
    assert A.statistic("grayscale", gray, x, gray).abs().max() < 1e-9  # no saturation left
    hue = A.augment("hue", x, A.AugmentParams(hue_turns=0.1))
    assert A.statistic("hue", hue, x, hue).mean().item() == pytest.approx(0.1, abs=0.02)  # shift, in turns
    flip = A.augment("flip", x)
    s = A.statistic("flip", torch.cat([x, flip]), x.repeat(2, 1, 1, 1), flip.repeat(2, 1, 1, 1))
    assert (s[:4] < 0).all() and (s[4:] > 0).all() and torch.allclose(s[:4], -s[4:])
    assert (A.statistic("blur", A.augment("blur", x), x, x) < A.statistic("blur", x, x, x)).all()


# ------------------------------------------------------------------------------------------------ interpolation
def test_interpolation_endpoints_and_slerp_norms():
    g = torch.Generator().manual_seed(0)
    h0, h1 = torch.randn(64, generator=g, dtype=torch.float64), 3 * torch.randn(64, generator=g, dtype=torch.float64)
    for mode in ("lerp", "slerp"):
        path = A.interpolate_embeddings(h0, h1, 7, mode)
        assert path.shape == (7, 64)
        assert torch.allclose(path[0], h0, atol=1e-12) and torch.allclose(path[-1], h1, atol=1e-12)
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    slerp = A.interpolate_embeddings(h0, h1, 7, "slerp")
    assert torch.allclose(slerp.norm(dim=1), (1 - t) * h0.norm() + t * h1.norm(), atol=1e-10)
    u1 = h1 / h1.norm() * h0.norm()  # equal norms: slerp keeps the norm, lerp cuts the corner
    assert torch.allclose(A.interpolate_embeddings(h0, u1, 9, "slerp").norm(dim=1), h0.norm().expand(9), atol=1e-10)
    assert A.interpolate_embeddings(h0, u1, 9, "lerp")[4].norm() < 0.9 * h0.norm()
    with pytest.raises(ValueError, match="lerp"):
        A.interpolate_embeddings(h0, h1, 3, "cubic")


def test_interpolate_uses_the_same_noise_at_every_point(pipe, images, tmp_path):
    same = A.interpolate(pipe, images[0], images[0], num_points=3, modes=("lerp",), run=FAST)
    assert same.numbers["lerp"]["cos_samples_to_a"][0] == pytest.approx(same.numbers["lerp"]["cos_samples_to_a"][-1])
    res = A.interpolate(pipe, images[0], images[1], num_points=4, run=FAST)
    assert res.numbers["t"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    norms = res.numbers["slerp"]["norm"]
    assert norms[0] == pytest.approx(pipe.encode([images[0]])[0].norm().item(), rel=1e-5)
    check_outputs(res, tmp_path)


# ------------------------------------------------------------------------------------------------ manipulate
def test_common_dims_and_edits_on_a_hand_made_bank():
    nb = torch.tensor([[1.0, 0.0, 0.0, 2.0, 1e-8],
                       [1.0, 0.0, 3.0, 0.0, 1e-8],
                       [1.0, 0.0, 4.0, 0.0, 1e-8],
                       [0.0, 0.0, 5.0, 1.0, 1e-8]])  # non-zero in 3/4, 0/4, 3/4, 2/4 and (below eps) 0/4
    assert A.common_dims(nb).tolist() == [True, False, True, False, False]
    assert A.common_dims(nb, min_frac=0.4).tolist() == [True, False, True, True, False]
    assert A.common_dims(nb, eps=1e-9).tolist() == [True, False, True, False, True]
    h, donor, mask = torch.tensor([5.0, 6, 7, 8, 9]), torch.tensor([-1.0, -2, -3, -4, -5]), A.common_dims(nb)
    assert A.edit_embedding(h, mask).tolist() == [0, 6, 0, 8, 9]
    assert A.edit_embedding(h, mask, donor).tolist() == [-1, 6, -3, 8, 9]
    bank = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    assert A.nearest_neighbours(torch.tensor([2.0, 0, 0]), bank, 2).tolist() == [1, 3]  # the copy, row 0, skipped
    assert A.nearest_neighbours(torch.tensor([2.0, 0, 0]), bank, 2, exclude_copies=False).tolist() == [0, 1]


def test_manipulate_with_a_cache_file_bank(pipe, images, tmp_path):
    from rcdm.cache import EmbeddingCache

    feats = pipe.encode(images).cpu()  # (16, D); row 0 is the source itself
    cache = tmp_path / "bank.safetensors"
    EmbeddingCache(torch.stack([feats, feats], 1), torch.arange(16), torch.zeros(16, dtype=torch.long),
                   {"encoder": pipe.encoder.config()}).save(cache)
    res = A.manipulate(pipe, images[0], images[1], str(cache), k=5, run=FAST)
    n = res.numbers
    assert 0 not in n["neighbours"] and len(n["neighbours"]) == 5
    assert n["common_dims"] == A.common_dims(feats[n["neighbours"]]).nonzero()[:, 0].tolist()
    c = n["conditions"]
    assert c["original"]["cos_condition_to_source"] == pytest.approx(1.0)
    assert n["num_common"] > 0  # pooled post-ReLU features: most dims are non-zero in every neighbour
    assert c["transplanted"]["cos_condition_to_target"] > c["original"]["cos_condition_to_target"]
    check_outputs(res, tmp_path)


# ------------------------------------------------------------------------------------------------ adversarial
def test_pgd_increases_cosine_to_the_target_within_the_ball(pipe, images):
    enc = pipe.encoder
    x = A.encoder_view(images[:2], enc)
    h = enc.encode(x)
    eps = 8 / 255
    adv = A.pgd_attack(enc, x[:1], h[1:], eps=eps, steps=5, step_size=2 / 255)
    before = torch.cosine_similarity(h[:1], h[1:]).item()
    after = torch.cosine_similarity(enc.encode(adv), h[1:]).item()
    assert after > before + 0.5 * (1 - before)  # at least halfway from where it started to cos = 1
    assert (adv - x[:1]).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


# ------------------------------------------------------------------------------------------------ memorization
def test_background_crop_hides_the_centre_box():
    x = torch.rand(2, 3, 32, 32)
    bg = A.background_crop(x, "frame", 0.5)
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[8:24, 8:24] = False
    assert torch.equal(bg[..., frame], x[..., frame])
    assert torch.allclose(bg[..., 8:24, 8:24], x[..., frame].mean(-1)[..., None, None].expand(2, 3, 16, 16))
    assert A.background_crop(x, "corner", 0.5).shape == x.shape


def test_memorization_end_to_end(pipe, cifar_test_images, tmp_path):
    imgs, labels = cifar_test_images
    bank = (pipe.encode(imgs).cpu(), torch.tensor(labels))
    res = A.memorization(pipe, imgs[:3], labels[:3], imgs[3:6], labels[3:6], bank, k_neighbours=4, knn_k=5, run=FAST)
    n = res.numbers
    for split in ("train", "test"):
        assert n[split]["num_images"] == 3
        for key in ("patch_knn_accuracy", "patch", "knn", "full_image_knn_accuracy"):
            assert 0 <= n[split][key] <= 1
    assert n["gap"]["knn"] == pytest.approx(n["train"]["knn"] - n["test"]["knn"])
    assert n["chance"] == pytest.approx(0.1)
    check_outputs(res, tmp_path)


# ------------------------------------------------------------------------------------------ spread, compare, layers
def test_spread_is_zero_for_the_identity_oracle_and_positive_for_a_model(pipe, images, tmp_path):
    oracle = A.spread(OraclePipe(), images[:2], run=Sampling(num_samples=3, num_inference_steps=1, scheduler=None))
    assert oracle.numbers["mean_pixel_std"] == 0 and oracle.numbers["diversity"]["pixel_rms"] == pytest.approx(0)
    res = A.spread(pipe, images[:2], run=FAST)
    assert res.numbers["mean_pixel_std"] > 0.01 and res.numbers["diversity"]["pixel_rms"] > 0
    check_outputs(res, tmp_path)


def test_compare_and_layers_share_noise_and_report_rank_and_diversity(pipe, proj_dir, images, tmp_path):
    oracles = A.compare({"identity": OraclePipe(), "constant": OraclePipe(constant=True)}, images[:4],
                        run=Sampling(num_samples=2, num_inference_steps=1))
    exact, blind = oracles.numbers["models"]["identity"], oracles.numbers["models"]["constant"]
    assert exact["rank"]["mean"] == 1.0 and exact["rank"]["top1_pct"] == 100.0 and exact["diversity"]["pixel_rms"] == 0
    assert blind["rank"]["mean"] > 1.5  # every sample the same grey: ranks are ties, not the source first
    pipes = {"backbone": pipe, "projector": RCDMPipeline.from_pretrained(proj_dir)}
    res = A.compare(pipes, images[:3], run=FAST)
    for name in pipes:
        m = res.numbers["models"][name]
        assert m["rank"]["num_references"] == 3 and m["diversity"]["pixel_rms"] > 0
        recorded = res.numbers["sampling"][name]
        assert recorded["scheduler"] == "ddim" and recorded["num_inference_steps"] == 2
    check_outputs(res, tmp_path)
    lay = A.layers(pipes, images[:3], run=FAST)
    assert [r["layer"] for r in lay.numbers["table"]] == ["backbone", "projector"] and lay.numbers["same_encoder"]
    assert lay.numbers["table"][0]["mean_rank"] == res.numbers["models"]["backbone"]["rank"]["mean"]  # same noise
    check_outputs(lay, tmp_path)


# ------------------------------------------------------------------------------------------------ CLI
def test_every_analyze_kind_documents_every_flag():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    kinds = next(a for a in sub.choices["analyze"]._actions if a.dest == "kind").choices
    assert set(kinds) == {"spread", "compare", "interpolate", "manipulate", "invariance", "adversarial",
                          "memorization", "layers"}
    for name, p in kinds.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"rcdm analyze {name} {action.option_strings[0]} has no help text"


def test_cli_spread_compare_adversarial_write_png_and_json(tiny_pipeline_dir, proj_dir, pngs, cifar_npz, tmp_path):
    common = ["--num-samples", "2", "--num-inference-steps", "2"]
    out = tmp_path / "spread.png"
    assert main(["analyze", "spread", "--model", str(tiny_pipeline_dir), "--image", *pngs[:2], *common,
                 "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["cli"]["kind"] == "spread"
    out = tmp_path / "cmp.png"
    assert main(["analyze", "compare", "--model", f"bb={tiny_pipeline_dir}", f"pj={proj_dir}",
                 "--data", f"{cifar_npz}:test", "--num-images", "2", *common, "--out", str(out),
                 "--json", str(tmp_path / "cmp-numbers.json")]) == 0
    assert set(json.loads((tmp_path / "cmp-numbers.json").read_text())["models"]) == {"bb", "pj"}
    out = tmp_path / "adv.png"
    assert main(["analyze", "adversarial", "--model", str(tiny_pipeline_dir), "--source", pngs[0], "--target", pngs[1],
                 "--pgd-steps", "2", "--references", f"{cifar_npz}:test", "--num-references", "3", *common,
                 "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["num_references"] == 5 and doc["cos_to_target_after"] > doc["cos_to_target_before"]
    with Image.open(out) as im:
        assert im.size[0] > 200


def test_cli_bad_input_is_one_clear_line(tiny_pipeline_dir, pngs, capsys):
    assert main(["analyze", "compare", "--model", str(tiny_pipeline_dir), str(tiny_pipeline_dir),
                 "--image", *pngs[:2]]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
