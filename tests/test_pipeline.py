"""RCDMPipeline: shapes, determinism, seeding, save/load, guidance, schedulers, bad input."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm import RCDMPipeline, Sampling, load_encoder, sample
from rcdm.data import ImageError, open_image
from rcdm.schedulers import SCHEDULERS, make_scheduler, scheduler_name, training_scheduler


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_types(pipe, cifar_test_images):
    imgs = cifar_test_images[0][:2]
    out = pipe(images=imgs, num_samples=3, num_inference_steps=3, generator=_gen())
    assert len(out.images) == 6 and all(im.size == (32, 32) and im.mode == "RGB" for im in out.images)
    assert out.embeddings.shape == (2, pipe.encoder.dim)
    pt = pipe(images=imgs, num_samples=3, num_inference_steps=3, generator=_gen(), output_type="pt").images
    assert pt.shape == (6, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1


def test_same_seed_same_samples_other_seed_differs(pipe, cifar_test_images):
    kw = dict(images=cifar_test_images[0][:2], num_samples=2, num_inference_steps=3, output_type="pt")
    a, b = pipe(generator=_gen(1), **kw).images, pipe(generator=_gen(1), **kw).images
    c = pipe(generator=_gen(2), **kw).images
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3


def test_seed_draws_sample_k_of_input_i_from_seed_i_k(pipe, cifar_test_images):
    """pipe(seed=s) is rcdm.sampling.sample with seed s, and a sample does not depend on the batch it is drawn in."""
    imgs = cifar_test_images[0][:3]
    kw = dict(num_samples=2, num_inference_steps=3, output_type="pt")
    out = pipe(images=imgs, seed=5, **kw)
    assert out.seed == 5
    run = Sampling(num_samples=2, num_inference_steps=3, seed=5)
    assert torch.equal(out.images, sample(pipe, pipe.encode(imgs), run=run))
    alone = pipe(images=imgs[1:2], seed=5, **kw).images  # input 1 alone is input 0 of its call: other noise
    assert (alone - out.images[2:4]).abs().mean() > 1e-3
    keyed = sample(pipe, pipe.encode(imgs[1:2]), keys=[1], run=run)  # ... unless it keeps its key
    torch.testing.assert_close(keyed, out.images[2:4], atol=1e-5, rtol=0)


def test_no_seed_draws_one_and_returns_it(pipe):
    h = torch.randn(2, pipe.encoder.dim)
    kw = dict(embeddings=h, num_samples=2, num_inference_steps=2, output_type="pt")
    torch.manual_seed(0)
    first = pipe(**kw)
    assert isinstance(first.seed, int) and torch.equal(pipe(seed=first.seed, **kw).images, first.images)
    assert pipe(generator=_gen(), **kw).seed is None  # diffusers' generator: the caller owns the noise


def test_scheduler_per_call_leaves_the_pipeline_as_it_was(pipe, tiny_pipeline_dir):
    kw = dict(embeddings=torch.ones(2, pipe.encoder.dim), num_inference_steps=3, seed=1, output_type="pt")
    before = pipe.scheduler
    got = pipe(scheduler="ddpm", **kw).images
    assert pipe.scheduler is before
    want = RCDMPipeline.from_pretrained(tiny_pipeline_dir, scheduler="ddpm")(**kw).images
    assert torch.equal(got, want) and not torch.equal(got, pipe(**kw).images)


def test_old_sampling_names_still_work_and_warn_once(monkeypatch):
    from rcdm import choices

    monkeypatch.setattr(choices, "_warned", set())
    with pytest.warns(FutureWarning, match="num_inference_steps"):
        old = Sampling(samples_per_image=2, steps=3, guidance=2.0)
    assert old == Sampling(num_samples=2, num_inference_steps=3, guidance_scale=2.0)
    with pytest.warns(FutureWarning, match="Sampling.steps"):
        assert old.steps == 3
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second use is silent
        assert Sampling(steps=4).num_inference_steps == 4 and old.steps == 3


def test_save_load_roundtrip_identical(pipe, tmp_path, cifar_test_images):
    pipe.save_pretrained(tmp_path / "copy")
    again = RCDMPipeline.from_pretrained(tmp_path / "copy")
    again.set_progress_bar_config(disable=True)
    kw = dict(images=cifar_test_images[0][:2], num_samples=2, num_inference_steps=3, output_type="pt")
    assert torch.equal(pipe(generator=_gen(), **kw).images, again(generator=_gen(), **kw).images)
    meta = json.loads((tmp_path / "copy" / "rcdm_pipeline.json").read_text())
    assert meta["encoder"]["dim"] == pipe.encoder.dim and meta["resolution"] == 32
    assert set(meta["encoder"]["preprocess"]) >= {"size", "crop", "mean", "std", "pixel_range"}


def test_saved_model_is_a_diffusers_pipeline_directory(pipe, tmp_path):
    """model_index.json names each component as diffusers writes it; diffusers' loaders read them by that name."""
    import importlib

    from diffusers import DiffusionPipeline

    pipe.save_pretrained(tmp_path / "m")
    index = DiffusionPipeline.load_config(tmp_path / "m")
    assert index["_class_name"] == "RCDMPipeline" and index["_diffusers_version"]
    assert index["unet"] == ["rcdm.model", "RCDMUNet"]
    assert index["scheduler"] == ["diffusers", type(pipe.scheduler).__name__]
    for name in ("unet", "scheduler"):  # what diffusers' pipeline loader does for each component
        library, cls = index[name]
        component = getattr(importlib.import_module(library), cls).from_pretrained(tmp_path / "m", subfolder=name)
        assert type(component) is type(getattr(pipe, name))
    assert "training" not in index and "encoder" in json.loads((tmp_path / "m" / "rcdm_pipeline.json").read_text())


def test_image_path_equals_embedding_path(pipe, cifar_test_images):
    imgs = cifar_test_images[0][:3]
    h = pipe.encode(imgs)
    a = pipe(images=imgs, num_samples=2, num_inference_steps=3, generator=_gen(), output_type="pt")
    b = pipe(embeddings=h, num_samples=2, num_inference_steps=3, generator=_gen(), output_type="pt")
    assert torch.equal(a.images, b.images)


def _manual_ddim(pipe, h, steps, seed):
    """The sampling loop written out with the conditional model only."""
    sched = make_scheduler("ddim", pipe.scheduler.config)
    x = torch.randn((len(h), 3, 32, 32), generator=_gen(seed))
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(pipe.unet(x, t, h).sample, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2)


def test_guidance_one_is_conditional_only(pipe, cifar_test_images):
    h = pipe.encode(cifar_test_images[0][:2])
    out = pipe(embeddings=h, num_inference_steps=4, guidance_scale=1.0, generator=_gen(3), output_type="pt")
    torch.testing.assert_close(out.images, _manual_ddim(pipe, h, 4, 3), atol=1e-5, rtol=0)


def test_guidance_zero_ignores_the_embedding(pipe):
    """g = 0 leaves only the null-conditioned prediction, so the embedding cannot matter; g = 3 it does."""
    h1, h2 = torch.randn(1, pipe.encoder.dim), torch.randn(1, pipe.encoder.dim) * 3
    run = lambda h, g: pipe(embeddings=h, num_inference_steps=3, guidance_scale=g, generator=_gen(),  # noqa: E731
                            output_type="pt").images
    torch.testing.assert_close(run(h1, 0.0), run(h2, 0.0))
    assert (run(h1, 3.0) - run(h2, 3.0)).abs().max() > 1e-4


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs_and_stays_in_range(pipe, name):
    """Before the final clamp: an untrained model predicts x0 far outside [-1, 1]; clipping must hold it."""
    h = torch.randn(4, pipe.encoder.dim) * 5
    x = pipe._sample(h, pipe._scheduler_for(name), 5, 2.0, _gen(), None)
    assert torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-4, (name, x.abs().max())


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_sampler_is_recorded_and_reloaded_under_its_own_name(tiny_pipeline_dir, tmp_path, name):
    """Three samplers share DPMSolverMultistepScheduler; the saved name must still be the one that was chosen."""
    p = RCDMPipeline.from_pretrained(tiny_pipeline_dir, scheduler=name)
    p.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "rcdm_pipeline.json").read_text())["sampling"]["scheduler"] == name
    assert scheduler_name(RCDMPipeline.from_pretrained(tmp_path / "m").scheduler) == name


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_sampler_made_from_another_samplers_config_is_the_same_sampler(name):
    """A model records one sampler; `scheduler=` builds another from its config. Settings of the recorded one (e.g.
    ddim-logsnr's use_lu_lambdas) must not carry over: dpm++ once silently ran on ddim-logsnr's grid."""
    train = training_scheduler()
    want = make_scheduler(name, train.config)
    want.set_timesteps(20)
    for other in SCHEDULERS:
        got = make_scheduler(name, make_scheduler(other, train.config).config)
        got.set_timesteps(20)
        assert scheduler_name(got) == name and torch.equal(got.timesteps, want.timesteps), (name, other)
        assert dict(got.config) == dict(want.config), (name, other)


def test_ddim_logsnr_steps_are_uniform_in_log_snr_and_ddim_steps_in_t():
    """Lu et al. 2022, Sec. 3.3: the grid is uniform in lambda = log(alpha / sigma), not in t."""
    train = training_scheduler()
    lam = 0.5 * torch.log(train.alphas_cumprod / (1 - train.alphas_cumprod)).double()  # lambda at each t

    def relative_spread(name, of_lambda):
        s = make_scheduler(name, train.config)
        s.set_timesteps(20)
        t = s.timesteps.long()
        assert len(t) == 20 and t[0] == 999, (name, t)
        gaps = torch.diff(lam[t] if of_lambda else t.double())
        return (gaps.std() / gaps.abs().mean()).item()

    # relative spread of the gaps, measured: 0.07 in lambda and 0.64 in t for ddim-logsnr (integer timesteps round
    # its grid), 0.31 in lambda and 0 in t for ddim
    assert relative_spread("ddim-logsnr", of_lambda=True) < 0.12
    assert relative_spread("ddim-logsnr", of_lambda=False) > 0.5
    assert relative_spread("ddim", of_lambda=False) < 0.01
    assert relative_spread("ddim", of_lambda=True) > 0.25


def test_batched_sampling_is_one_unet_call_per_step(pipe, monkeypatch):
    calls = []
    orig = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or orig(x, *a, **k))
    pipe(embeddings=torch.randn(3, pipe.encoder.dim), num_samples=4, num_inference_steps=5, guidance_scale=2.0)
    assert calls == [24] * 5  # 3 inputs x 4 samples x (cond + null)


def _old_layout(tiny_pipeline_dir, root):
    """A model as saved before issue 33: no model_index.json, its encoder beside it as `file:../encoder`, and (before
    issue 34) its sampler apart from "sampling"."""
    import shutil

    shutil.copytree(tiny_pipeline_dir, root / "model")
    meta_path = root / "model" / "rcdm_pipeline.json"
    meta = json.loads(meta_path.read_text())
    assert meta["encoder"]["spec"] == "file:encoder"  # today's layout: the encoder travels inside
    shutil.move(root / "model" / "encoder", root / "encoder")
    (root / "model" / "model_index.json").unlink()
    sampling = dict(meta.pop("sampling"))
    meta_path.write_text(json.dumps({**meta, "encoder": {**meta["encoder"], "spec": "file:../encoder"},
                                     "scheduler": sampling.pop("scheduler"), "sampling": sampling}))
    return root / "model"


def test_an_old_directory_still_loads(tiny_pipeline_dir, tmp_path, monkeypatch):
    old = _old_layout(tiny_pipeline_dir, tmp_path / "a")
    monkeypatch.chdir(tmp_path)  # the working directory is neither the model's nor the encoder's parent
    again = RCDMPipeline.from_pretrained(old)  # checks the encoder's fingerprint too
    assert again.sampling_defaults == RCDMPipeline.from_pretrained(tiny_pipeline_dir).sampling_defaults
    kw = dict(embeddings=torch.ones(1, again.encoder.dim), num_samples=2, num_inference_steps=2, output_type="pt")
    assert torch.equal(again(generator=_gen(), **kw).images,
                       RCDMPipeline.from_pretrained(tiny_pipeline_dir)(generator=_gen(), **kw).images)


def test_a_saved_copy_carries_its_encoder(tiny_pipeline_dir, tmp_path, monkeypatch):
    """A local `file:` encoder is copied into the saved model (`file:encoder`), so the copy loads after the original
    encoder is deleted: a relative spec out of the directory once pointed at nothing when the model moved."""
    import shutil

    old = _old_layout(tiny_pipeline_dir, tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    pipe = RCDMPipeline.from_pretrained(old)
    pipe.save_pretrained(tmp_path / "b" / "c" / "copy")
    shutil.rmtree(tmp_path / "a")
    saved = json.loads((tmp_path / "b" / "c" / "copy" / "rcdm_pipeline.json").read_text())
    assert saved["encoder"]["spec"] == "file:encoder"
    assert {f.name for f in (tmp_path / "b" / "c" / "copy" / "encoder").iterdir()} >= {"config.json",
                                                                                       "model.safetensors"}
    again = RCDMPipeline.from_pretrained(tmp_path / "b" / "c" / "copy")
    h = torch.ones(1, pipe.encoder.dim)
    assert again.encoder.fingerprint() == pipe.encoder.fingerprint()
    kw = dict(embeddings=h, num_samples=2, num_inference_steps=2, output_type="pt")
    assert torch.equal(again(generator=_gen(), **kw).images, pipe(generator=_gen(), **kw).images)
    again.save_pretrained(tmp_path / "b" / "c" / "copy")  # over itself: the encoder it reads is the one it replaces
    assert RCDMPipeline.from_pretrained(tmp_path / "b" / "c" / "copy").encoder.fingerprint() == pipe.encoder.fingerprint()


def test_a_shipped_encoder_is_named_not_copied(tiny_encoder_dir, tmp_path, monkeypatch):
    """An encoder under pretrained_root() is recorded as `pretrained:NAME`, which resolves wherever rcdm is installed."""
    import shutil

    from conftest import make_tiny_pipeline

    root = tmp_path / "shipped"
    shutil.copytree(tiny_encoder_dir, root / "tiny-ssl")
    monkeypatch.setenv("RCDM_PRETRAINED", str(root))
    make_tiny_pipeline(tmp_path / "m", root / "tiny-ssl")
    meta = json.loads((tmp_path / "m" / "rcdm_pipeline.json").read_text())
    assert meta["encoder"]["spec"] == "pretrained:tiny-ssl" and not (tmp_path / "m" / "encoder").exists()
    pipe = RCDMPipeline.from_pretrained(tmp_path / "m")
    assert pipe.encoder.spec == "pretrained:tiny-ssl"
    RCDMPipeline.from_pretrained(tmp_path / "m", encoder=load_encoder(f"file:{tiny_encoder_dir}"))  # same weights


def test_relocate_spec_keeps_a_carried_encoder_and_re_aims_one_outside(tmp_path):
    from rcdm.pipeline import relocate_spec

    out, base = tmp_path / "x" / "out", tmp_path / "m"
    assert relocate_spec("file:encoder", out, base=base) == "file:encoder"  # travels with a copy of the directory
    assert relocate_spec("file:../enc", out, base=base) == "file:../../enc"
    assert relocate_spec("torchvision:resnet50@IMAGENET1K_V1", out, base=base) == "torchvision:resnet50@IMAGENET1K_V1"


def test_recorded_sampling_defaults_travel_with_the_model(tiny_pipeline_dir, tmp_path, monkeypatch):
    from rcdm.pipeline import recorded_sampling

    p = RCDMPipeline.from_pretrained(tiny_pipeline_dir)
    p.sampling_defaults = {"num_inference_steps": 3, "guidance_scale": 2.0, "scheduler": "unipc"}
    p.save_pretrained(tmp_path / "m")
    q = RCDMPipeline.from_pretrained(tmp_path / "m")
    want = {"scheduler": "unipc", "num_inference_steps": 3, "guidance_scale": 2.0}
    assert recorded_sampling(tmp_path / "m") == q.sampling_defaults == want
    assert json.loads((tmp_path / "m" / "rcdm_pipeline.json").read_text())["sampling"] == want  # one object
    calls = []
    orig = q.unet.forward
    monkeypatch.setattr(q.unet, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or orig(x, *a, **k))
    q(embeddings=torch.randn(1, q.encoder.dim))  # no steps, no guidance: the recorded ones
    q(embeddings=torch.randn(1, q.encoder.dim), num_inference_steps=2, guidance_scale=1.0)  # explicit ones win
    assert calls == [2, 2, 2, 1, 1]


def test_saving_over_a_model_keeps_its_card_and_replaces_the_weights(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("my model card")
    (tmp_path / "m" / "unet" / "stale.bin").write_bytes(b"old")
    pipe.save_pretrained(tmp_path / "m", dtype=torch.float16)
    assert (tmp_path / "m" / "README.md").read_text() == "my model card"
    assert not (tmp_path / "m" / "unet" / "stale.bin").exists()  # owned by the pipeline: replaced whole
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float16}  # the new weights, not the old fp32 ones


def test_bad_recorded_sampling_defaults_are_refused_at_load(tiny_pipeline_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_pipeline_dir, tmp_path / "m")
    meta_path = tmp_path / "m" / "rcdm_pipeline.json"
    meta = json.loads(meta_path.read_text())
    for bad, match in (({"num_inference_steps": 0}, "num_inference_steps"), ({"eta": 1.0}, "unknown"),
                       ({"scheduler": "euler"}, "unknown scheduler")):
        meta_path.write_text(json.dumps({**meta, "sampling": bad}))
        with pytest.raises(ValueError, match=match):
            RCDMPipeline.from_pretrained(tmp_path / "m")


# ------------------------------------------------------------------ bad input
def test_wrong_embedding_dim_names_sizes(pipe):
    with pytest.raises(ValueError, match=rf"\(B, {pipe.encoder.dim}\).*\(2, 7\)"):
        pipe(embeddings=torch.randn(2, 7))


@pytest.mark.parametrize("kw, match", [
    ({}, "no prior"),
    ({"embeddings": torch.randn(1, 64), "images": [Image.new("RGB", (8, 8))]}, "exactly one"),
    ({"embeddings": torch.randn(1, 64), "num_samples": 0}, "num_samples"),
    ({"embeddings": torch.randn(1, 64), "num_inference_steps": 0}, "num_inference_steps"),
    ({"embeddings": torch.randn(1, 64), "guidance_scale": float("nan")}, "guidance_scale"),
    ({"embeddings": torch.full((1, 64), float("nan"))}, "NaN"),
    ({"embeddings": torch.randn(1, 64), "seed": -1}, "seed"),
    ({"embeddings": torch.randn(1, 64), "seed": 0, "generator": torch.Generator()}, "not both"),
    ({"embeddings": torch.randn(1, 64), "scheduler": "euler"}, "unknown scheduler"),
])
def test_bad_arguments(pipe, kw, match):
    with pytest.raises(ValueError, match=match):
        pipe(**kw)


def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("img", [
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)),
    Image.new("L", (40, 30), 128),
    Image.new("P", (40, 30), 3),
    Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50, mode="I;16"),
    Image.new("CMYK", (40, 30), (0, 255, 0, 0)),
])
def test_any_image_mode_is_converted(pipe, img):
    rgb = open_image(_png_bytes(img) if img.mode != "CMYK" else img)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    assert pipe.encode([rgb]).shape == (1, pipe.encoder.dim)


def test_sixteen_bit_uses_full_range():
    img = Image.fromarray((np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), mode="I;16")
    a = np.asarray(open_image(_png_bytes(img)))
    assert a.min() == 0 and a.max() == 255  # rescaled, not clipped at 255


def test_huge_image_is_downsized(tmp_path):
    Image.new("RGB", (6000, 40), (1, 2, 3)).save(tmp_path / "wide.png")
    assert max(open_image(tmp_path / "wide.png").size) == 4096


def test_truncated_and_non_image_files_fail_clearly(tmp_path, cifar_test_images):
    (tmp_path / "notes.png").write_text("this is text")
    data = _png_bytes(cifar_test_images[0][0].resize((64, 64)))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    for name in ("notes.png", "cut.png", "missing.png"):
        with pytest.raises(ImageError, match=name):
            open_image(tmp_path / name)


def test_checkpoint_refuses_a_different_encoder(tiny_pipeline_dir):
    other = load_encoder("torchvision:resnet18", "backbone")
    with pytest.raises(ValueError, match="trained on encoder"):
        RCDMPipeline.from_pretrained(tiny_pipeline_dir, encoder=other)


def test_missing_model_dir_lists_shipped(tmp_path):
    with pytest.raises(FileNotFoundError, match="no RCDM pipeline"):
        RCDMPipeline.from_pretrained(tmp_path / "nope")
