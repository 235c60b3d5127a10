"""The reference ADM denoiser (rcdm.adm) and the conversion of the published RCDM checkpoints (rcdm.convert).

`GDUNet` below is an independent re-statement of guided-diffusion's `UNetModel` as RCDM configures it (scale-shift
ResBlocks that resample by average pooling / nearest upsampling, legacy QKV attention with heads split before
q/k/v, sinusoidal [cos, sin] timestep embedding, h through one Linear added to the time embedding). Its module
names are the released files' key names, so its state dict is a stand-in for a released checkpoint, and its
forward is the oracle the converted diffusers-block network must match.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rcdm.adm import ADMUNet
from rcdm.convert import PUBLISHED, REFERENCE, build_unet, convert, convert_state_dict, read_checkpoint


def gn(c):
    return nn.GroupNorm(32, c)


class GDResBlock(nn.Module):
    def __init__(self, cin, cout, temb, mode=None):
        super().__init__()
        self.mode = mode  # None, "up" or "down"
        self.in_layers = nn.Sequential(gn(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb, 2 * cout))
        self.out_layers = nn.Sequential(gn(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def resample(self, x):
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, 2) if self.mode == "down" else x

    def forward(self, x, emb):
        h = self.in_layers[2](self.resample(self.in_layers[1](self.in_layers[0](x))))
        x = self.resample(x)
        scale, shift = self.emb_layers(emb)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        return self.skip_connection(x) + self.out_layers[3](self.out_layers[1](h))


class GDAttention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj_out = gn(c), nn.Conv1d(c, 3 * c, 1), nn.Conv1d(c, c, 1)

    def forward(self, x):
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x.reshape(b, c, -1)))  # (B, 3C, T)
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, -1).split(ch, dim=1)  # heads split before q/k/v
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (x.reshape(b, c, -1) + self.proj_out(a)).reshape(b, c, hh, ww)


class GDSeq(nn.Sequential):
    def forward(self, x, emb):
        for m in self:
            x = m(x, emb) if isinstance(m, GDResBlock) else m(x)
        return x


class GDUNet(nn.Module):
    def __init__(self, ssl_dim, mc, mult, nres, attn, heads, out_ch=6):
        super().__init__()
        self.mc, temb = mc, 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.ssl_emb = nn.Linear(ssl_dim, temb)
        ch = mc * mult[0]
        self.input_blocks, chans = nn.ModuleList([GDSeq(nn.Conv2d(3, ch, 3, padding=1))]), [ch]
        for lvl, m in enumerate(mult):
            for _ in range(nres):
                layers = [GDResBlock(ch, mc * m, temb)] + ([GDAttention(mc * m, heads)] if lvl in attn else [])
                ch = mc * m
                self.input_blocks.append(GDSeq(*layers))
                chans.append(ch)
            if lvl < len(mult) - 1:
                self.input_blocks.append(GDSeq(GDResBlock(ch, ch, temb, "down")))
                chans.append(ch)
        self.middle_block = GDSeq(GDResBlock(ch, ch, temb), GDAttention(ch, heads), GDResBlock(ch, ch, temb))
        self.output_blocks = nn.ModuleList()
        for lvl, m in reversed(list(enumerate(mult))):
            for i in range(nres + 1):
                layers = [GDResBlock(ch + chans.pop(), mc * m, temb)]
                ch = mc * m
                layers += [GDAttention(ch, heads)] if lvl in attn else []
                layers += [GDResBlock(ch, ch, temb, "up")] if lvl and i == nres else []
                self.output_blocks.append(GDSeq(*layers))
        self.out = nn.Sequential(gn(ch), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def forward(self, x, t, feat):
        half = self.mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1)) + self.ssl_emb(feat)
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


TINY = dict(mc=32, mult=(1, 2), nres=1, attn=(1,), heads=2)


def tiny_pair(ssl_dim=8, seed=0):
    torch.manual_seed(seed)
    ref = GDUNet(ssl_dim, **TINY).eval()
    for p in ref.parameters():  # no zero-initialised layers: every tensor must reach the output
        nn.init.normal_(p, std=0.05)
    adm = ADMUNet(embedding_dim=ssl_dim, sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), num_heads=2).eval()
    adm.load_state_dict({**adm.state_dict(), **convert_state_dict(ref.state_dict(), adm)})
    return ref, adm


def test_reference_preset_has_the_reference_parameter_count():
    with torch.device("meta"):
        n = sum(p.numel() for p in ADMUNet(embedding_dim=2048, **REFERENCE).parameters())
    assert abs(n - 422_603_782) <= 0.001 * 422_603_782, n  # facebookresearch/RCDM, MODEL_FLAGS_128, ssl_dim 2048


@pytest.mark.parametrize("ssl_dim", [2048, 256])
def test_full_size_release_layout_converts_every_key_once(ssl_dim):
    with torch.device("meta"):
        ref = GDUNet(ssl_dim, mc=256, mult=(1, 1, 2, 3, 4), nres=2, attn=(2, 3, 4), heads=4)
    state = ref.state_dict()
    assert len(state) == 494 and "output_blocks.14.0.in_layers.0.weight" in state  # 15 up blocks
    unet = build_unet(state)
    out = convert_state_dict(state, unet)
    params = {k for k, _ in unet.named_parameters()}
    assert params == set(out)  # every parameter filled, and nothing else
    assert sum(out[k].numel() for k in params) == sum(v.numel() for v in state.values())


def test_converted_tiny_network_matches_the_reference_forward():
    ref, adm = tiny_pair()
    g = torch.Generator().manual_seed(1)
    x, h = torch.randn(3, 3, 16, 16, generator=g), torch.randn(3, 8, generator=g)
    t = torch.tensor([0, 417, 999])
    with torch.no_grad():
        want, got = ref(x, t, h), adm(x, t, h).sample
    assert want.shape == got.shape == (3, 6, 16, 16) and want.abs().mean() > 0.01
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the embedding reaches the output
        assert (adm(x, t, h + 1).sample - got).abs().max() > 1e-3


def test_bad_files_are_one_line_errors(tmp_path):
    ref, _ = tiny_pair()
    state = ref.state_dict()
    torch.save(state, tmp_path / "ok.pt")
    blob = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated|not a readable"):
        read_checkpoint(tmp_path / "cut.pt")
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    with pytest.raises(ValueError, match="not an RCDM checkpoint"):
        read_checkpoint(tmp_path / "wrapped.pt")
    unet = ADMUNet(embedding_dim=8, sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_levels=(1,), num_heads=2)
    extra = {**state, "label_emb.weight": torch.zeros(10, 128)}
    with pytest.raises(ValueError, match="label_emb.weight"):
        convert_state_dict(extra, unet)
    missing = {k: v for k, v in state.items() if not k.startswith("out.2")}
    with pytest.raises(ValueError, match="lacks 2 tensors"):
        convert_state_dict(missing, unet)
    wrong = {**state, "ssl_emb.weight": torch.zeros(128, 16)}
    with pytest.raises(ValueError, match="ssl_dim"):
        convert_state_dict(wrong, unet)


def test_published_names_cover_the_nine_releases():
    assert len(PUBLISHED) == 9
    assert PUBLISHED["rcdm-imagenet128-dino-trunk"].layer == "backbone"
    assert PUBLISHED["rcdm-imagenet128-vicreg-head"].encoder == "vicreg_resnet50"
    assert PUBLISHED["rcdm-imagenet128-supervised"].stem == "supervised"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def small_release(tmp_path_factory, tiny_encoder_dir):
    """A released-layout checkpoint of the reference structure at width 32 (every level, every attention), for the
    tiny test encoder's 64-d backbone, saved as the release files are: a plain state dict."""
    torch.manual_seed(0)
    ref = GDUNet(64, mc=32, mult=(1, 1, 2, 3, 4), nres=2, attn=(2, 3, 4), heads=4).eval()
    for p in ref.parameters():
        nn.init.normal_(p, std=0.02)
    path = tmp_path_factory.mktemp("release") / "rcdm_ema_tiny_trunk.pt"
    torch.save(ref.state_dict(), path)
    return ref, path


def test_convert_writes_a_self_describing_pipeline(small_release, tiny_encoder_dir, tmp_path):
    from rcdm import RCDMPipeline
    from rcdm.cli import main

    ref, path = small_release
    out = tmp_path / "converted"
    assert main(["convert-rcdm", str(path), "--encoder", f"file:{tiny_encoder_dir}", "--out", str(out)]) == 0
    pipe = RCDMPipeline.from_pretrained(out)
    assert isinstance(pipe.unet, ADMUNet) and pipe.resolution == 128
    pre = pipe.encoder.preprocess
    assert (pre.size, pre.crop, pre.mean, pre.std, pre.pixel_range, pre.interpolation) == \
        (224, 224, (0, 0, 0), (1, 1, 1), (-1, 1), "box-bicubic")
    assert pipe.scheduler.config.variance_type == "learned_range"
    assert pipe.sampling_defaults["num_inference_steps"] == 100
    card = (out / "README.md").read_text()
    assert "CC-BY-NC" in card and str(path) in card and "convert-rcdm" in card
    x, t, h = torch.randn(2, 3, 128, 128), torch.tensor([5, 900]), torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, h).sample, ref(x, t, h), atol=1e-5, rtol=1e-5)
    bad = main(["convert-rcdm", str(path), "--encoder", f"file:{tiny_encoder_dir}", "--layer", "projector",
                "--out", str(tmp_path / "bad")])
    assert bad == 2 and not (tmp_path / "bad").exists()  # 64-d RCDM vs the 16-d projector: refused, nothing written


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_learned_variance_sampling_stays_in_range(small_release, tiny_encoder_dir, tmp_path, scheduler):
    from rcdm import RCDMPipeline
    from rcdm.schedulers import make_scheduler

    _, path = small_release
    out = convert(path, f"file:{tiny_encoder_dir}", "backbone", tmp_path / "c", RCDMPipeline)
    pipe = RCDMPipeline.from_pretrained(out)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.scheduler.step = (lambda step: lambda out, *a, **k: seen.append(out.shape[1]) or step(out, *a, **k))(
        pipe.scheduler.step)
    h = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    x = pipe._sample(h, pipe.scheduler, 3, 1.0, torch.Generator().manual_seed(0), None)  # (2, 3, 128, 128), unclamped
    assert torch.isfinite(x).all() and x.abs().max() < 4
    assert seen == [6 if scheduler == "ddpm" else 3] * 3  # DDPM reads the learned variance, DDIM the mean only
    with pytest.raises(ValueError, match="classifier-free guidance is unavailable"):
        pipe(embeddings=h, num_inference_steps=1, guidance_scale=2.0)


def test_published_names_parse_local_copies(monkeypatch, tmp_path):
    import rcdm.convert as C

    calls = []
    monkeypatch.setattr(C, "convert", lambda ckpt, enc, layer, out, cls, **kw: calls.append((str(ckpt), enc, layer)) or out)
    C.resolve_published("rcdm-imagenet128-dino-head@/w/rcdm_ema_dino_head.pt+/w/dino_full.pth", object, tmp_path)
    C.resolve_published("rcdm-imagenet128-supervised@/w/rcdm_ema_supervised.pt", object, tmp_path)
    assert calls == [("/w/rcdm_ema_dino_head.pt", "dino_resnet50@/w/dino_full.pth", "projector"),
                     ("/w/rcdm_ema_supervised.pt", "torchvision:resnet50@IMAGENET1K_V1", "backbone")]
    assert C.resolve_published("rcdm-cifar10-backbone", cache_dir=tmp_path) is None


def _center_crop_arr(pil, image_size):
    """guided-diffusion image_datasets.center_crop_arr, restated: BOX halving, BICUBIC with the sides rounded, crop at
    offset (side - size) // 2."""
    import numpy as np
    from PIL import Image

    while min(*pil.size) >= 2 * image_size:
        pil = pil.resize(tuple(x // 2 for x in pil.size), resample=Image.BOX)
    scale = image_size / min(*pil.size)
    pil = pil.resize(tuple(round(x * scale) for x in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


@pytest.mark.parametrize("box", [None, (30, 100, 481, 400), (0, 0, 300, 451), (0, 0, 512, 230)],
                         ids=["512x600", "451x300", "300x451", "512x230"])
def test_rcdm_preprocessing_is_center_crop_arr_on_non_square_photos(box):
    """A converted model's encoder input, against RCDM's (center_crop_arr at 224, then x / 127.5 - 1), on a real
    photograph (matplotlib's sample Grace Hopper, 512x600) and crops of it: exact for images (PIL, paths, bytes),
    within a grey level for float tensors (the differentiable path)."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    from rcdm.convert import RCDM_PREPROCESS
    from rcdm.encoders import EncoderNet, FrozenEncoder, Preprocess
    from rcdm.images import pil_to_uint8

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    img = img.crop(box) if box else img
    want = torch.from_numpy(_center_crop_arr(img, 224).astype(np.float64) / 127.5 - 1).permute(2, 0, 1)  # (3, 224, 224)
    pre = Preprocess.from_dict(RCDM_PREPROCESS)  # what a converted model records and its encoder applies
    identity = nn.Conv2d(3, 3, 1)
    nn.init.dirac_(identity.weight), nn.init.zeros_(identity.bias)
    pixels = FrozenEncoder(EncoderNet(nn.Sequential(identity, nn.Flatten())), "pixels", "backbone", pre)  # h = input
    got = pixels.encode([img]).view(3, 224, 224).double()
    assert (got - want).abs().max() < 1e-6  # before: mean 5.1, max 134 grey levels on 451x300 (int() sides)
    x = pre.view(pil_to_uint8(img)[None].float() / 255)  # (1, 3, 224, 224) in [0, 1]
    lo, hi = pre.pixel_range
    assert ((x[0] * (hi - lo) + lo).double() - want).abs().mean() * 127.5 < 1.0  # measured 0.30-0.55


def test_imagenet_preset_is_the_reference_network_and_trains(tmp_path, tiny_npz, tiny_encoder_dir):
    """The imagenet-128 preset builds ADMUNet; a tiny copy of it trains a few steps with the hybrid loss and exports
    a pipeline whose DDPM sampler reads the learned variance."""
    import dataclasses

    from rcdm import RCDMPipeline
    from rcdm.cli import main
    from rcdm.model import build_denoiser
    from rcdm.train import PRESETS, TrainConfig, train

    preset = PRESETS["imagenet-128"]
    with torch.device("meta"):
        unet = build_denoiser(preset.unet, 2048, preset.resolution, null_embedding=False)
    assert isinstance(unet, ADMUNet) and sum(p.numel() for p in unet.parameters()) == 422_603_782
    cache = tmp_path / "emb.safetensors"
    assert main(["embed", "--encoder", f"file:{tiny_encoder_dir}", "--data", str(tiny_npz), "--out", str(cache)]) == 0
    small = dataclasses.replace(preset.unet, block_out_channels=(32, 64), attention_levels=(1,), layers_per_block=1,
                                num_heads=2)
    cfg = dataclasses.replace(preset, data=str(tiny_npz), cache=str(cache), output_dir=str(tmp_path / "run"),
                              resolution=16, unet=small, batch_size=4, max_steps=3, warmup_steps=1, log_every=1,
                              sample_every=0, checkpoint_every=100, num_workers=0, global_batch_size=0)
    assert isinstance(cfg, TrainConfig)
    pipe = RCDMPipeline.from_pretrained(train(cfg, "test"))
    assert isinstance(pipe.unet, ADMUNet) and pipe.unet.null_embedding is not None  # trained with condition dropout
    assert pipe.scheduler.config.variance_type == "learned_range"
    out = pipe(embeddings=torch.randn(2, 64), num_inference_steps=2, guidance_scale=2.0, output_type="pt").images
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ RCDM's sampler
def gd_space_timesteps(num_timesteps, count):
    """guided-diffusion respace.space_timesteps(num_timesteps, [count]) for one section: `count` steps evenly
    strided from 0 to num_timesteps - 1, each rounded to the nearest integer."""
    stride = (num_timesteps - 1) / (count - 1)
    return sorted({round(i * stride) for i in range(count)})


def gd_sample(model, h, noise, steps=100):
    """guided-diffusion's p_sample_loop on the respaced process (SpacedDiffusion, learn_sigma, clip_denoised=True),
    in float64 as guided-diffusion keeps its schedule: betas between kept steps from alphas_cumprod, the learned
    variance interpolated in log space between the respaced beta and the clipped posterior variance, x0 clipped to
    [-1, 1], noise added at every step but the last (t = 0). `noise()` gives x_T, then one tensor per noisy step."""
    import numpy as np

    acp_full = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))  # linear schedule, scale 1
    use = gd_space_timesteps(1000, steps)
    betas = 1 - acp_full[use] / np.concatenate([[1.0], acp_full[use][:-1]])  # respaced betas
    acp = np.cumprod(1 - betas)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    post_var = betas * (1 - acp_prev) / (1 - acp)
    post_logvar = np.log(np.concatenate([post_var[1:2], post_var[1:]]))  # "clipped": index 0 borrows index 1
    coef_x0, coef_xt = betas * np.sqrt(acp_prev) / (1 - acp), (1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp)
    x = noise().double()
    for i in reversed(range(steps)):
        with torch.no_grad():
            out = model(x.float(), torch.full((len(x),), use[i]), h).double()  # the model sees the original t
        eps, v = out[:, :3], out[:, 3:]
        frac = (v + 1) / 2
        logvar = frac * math.log(betas[i]) + (1 - frac) * post_logvar[i]
        x0 = (math.sqrt(1 / acp[i]) * x - math.sqrt(1 / acp[i] - 1) * eps).clamp(-1, 1)
        mean = coef_x0[i] * x0 + coef_xt[i] * x
        x = mean + torch.exp(0.5 * logvar) * noise().double() if i > 0 else mean
    return x.float()


def test_respacing_formula_is_rcdms_grid():
    use = gd_space_timesteps(1000, 100)
    assert len(use) == 100 and use[:3] == [0, 10, 20] and use[-3:] == [979, 989, 999] and use[6] == 61


@pytest.fixture(scope="module")
def converted(small_release, tmp_path_factory, tiny_encoder_dir):
    from rcdm import RCDMPipeline

    _, path = small_release
    return convert(path, f"file:{tiny_encoder_dir}", "backbone", tmp_path_factory.mktemp("conv") / "c", RCDMPipeline)


def test_converted_model_records_rcdms_sampler_and_grid(converted):
    from rcdm import RCDMPipeline
    from rcdm.schedulers import scheduler_name

    pipe = RCDMPipeline.from_pretrained(converted)
    assert scheduler_name(pipe.scheduler) == "ddpm-linspace" and pipe.sampling_defaults["num_inference_steps"] == 100
    pipe.scheduler.set_timesteps(100)
    assert pipe.scheduler.timesteps.tolist() == gd_space_timesteps(1000, 100)[::-1]
    for fast in ("ddim", "dpm++"):  # the faster samplers stay one argument away
        assert scheduler_name(RCDMPipeline.from_pretrained(converted, scheduler=fast).scheduler) == fast
    card = (converted / "README.md").read_text()
    assert "32 channels" in card and "ddpm-linspace" in card  # the width of this file, not the reference's 256


@pytest.mark.slow
@pytest.mark.parametrize("sampler, steps", [("ddpm-linspace", 100), ("ddpm-linspace", 7)])
def test_converted_chain_equals_guided_diffusions_chain(converted, tiny_encoder_dir, sampler, steps):
    """The pipeline's sampling loop with the recorded sampler, against guided-diffusion's respaced p_sample_loop
    restated above, on one network and identical noise (a 16 px ADM: the chain's arithmetic does not depend on size)."""
    from rcdm import RCDMPipeline
    from rcdm.schedulers import make_scheduler

    ref, adm = tiny_pair(ssl_dim=64)
    loaded = RCDMPipeline.from_pretrained(converted)
    pipe = RCDMPipeline(unet=adm, scheduler=make_scheduler(sampler, loaded.scheduler.config), encoder=loaded.encoder)
    pipe.set_progress_bar_config(disable=True)
    h = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    out = pipe(embeddings=h, num_inference_steps=steps, guidance_scale=1.0, output_type="pt",
               generator=torch.Generator().manual_seed(1))  # one generator: x_T, then each step's noise, in turn
    got = out.images * 2 - 1  # (2, 3, 16, 16) in [-1, 1]
    g = torch.Generator().manual_seed(1)
    want = gd_sample(ref, h, lambda: torch.randn(2, 3, 16, 16, generator=g), steps)
    assert want.abs().max() <= 1  # the last step (t = 0) returns the clipped x0, unclamped by the pipeline
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # measured max 1.4e-5 (the trailing grid: 0.16)


def test_convert_refuses_random_init_encoders_and_bad_files_in_one_line(small_release, tiny_encoder_dir, tmp_path,
                                                                        capsys):
    from rcdm.cli import main

    _, path = small_release
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    blob = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 3])
    cases = {"empty.pt": "is empty", "notes.pt": "neither a PyTorch checkpoint", "cut.pt": "truncated"}
    for name, why in cases.items():
        code = main(["convert-rcdm", str(tmp_path / name), "--encoder", f"file:{tiny_encoder_dir}",
                     "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and why in err and str(tmp_path / name) in err and len(err.splitlines()) == 1, err
    code = main(["convert-rcdm", str(path), "--encoder", "torchvision:resnet18", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "random weights" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_published_name_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    import time

    import rcdm.convert as C
    from rcdm.encoders import load_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(OSError, match=r"rcdm_ema_dino_trunk\.pt is not in the cache .* HF_HUB_OFFLINE is set.*"
                                      r"rcdm-imagenet128-dino-trunk@FILE"):
        C.resolve_published("rcdm-imagenet128-dino-trunk", cache_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("rcdm.encoders.online.reachable", lambda url, timeout=3.0: False)  # no network, no env var
    with pytest.raises(OSError, match=r"dl\.fbaipublicfiles\.com cannot be reached"):
        C.resolve_published("rcdm-imagenet128-dino-trunk", cache_dir=tmp_path)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty torch hub cache
    with pytest.raises(OSError, match=r"dino_resnet50: .*\.pth is not in the cache.*use dino_resnet50@FILE"):
        load_encoder("dino_resnet50")
    assert time.time() - t0 < 10
