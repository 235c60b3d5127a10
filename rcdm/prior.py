"""A diffusion prior over representations, h ~ p(h): RCG's "RDM" (Li, Katabi & He 2023, arXiv:2312.03701, Sec. 3.1).

Sampling h from it and then images from h turns an RCDM into an unconditional generator, and shows what a typical
representation looks like (or one near a given image's, by partial noising and denoising back, SDEdit-style).

    rcdm train-prior --cache runs/emb-backbone.safetensors --output-dir runs/prior \\
        --model pretrained/rcdm-cifar10-backbone
    rcdm sample --unconditional 16 --out dream.png

The prior is a small MLP of residual blocks with adaptive (time-conditioned) LayerNorm, predicting eps on
standardised embeddings, with diffusers' DDPM scheduler (cosine betas; x0 clipped to +-5 standard deviations).
It lives in `<pipeline>/prior/` (config.json + safetensors + scheduler_config.json), next to the UNet, and is
loaded with the pipeline when present.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin

from .cache import EmbeddingCache
from .fsutil import fresh_tmp_dir, replace_dir
from .metrics import frechet_distance, knn_predict
from .model import EmbeddingCondition
from .prior_config import PriorConfig  # noqa: F401 (torch-free, for the flags; re-exported here)

PRIOR_DIR = "prior"


class PriorBlock(nn.Module):
    """x + MLP(AdaLN(x, t)): LayerNorm modulated by the time embedding, Linear-SiLU-Linear, residual."""

    def __init__(self, width: int, temb: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(temb, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, x, temb):  # (B, W), (B, T)
        scale, shift = self.mod(F.silu(temb)).chunk(2, dim=1)  # (B, W) each
        return x + self.mlp(self.norm(x) * (1 + scale) + shift)


class PriorMLP(ModelMixin, ConfigMixin):
    """eps(h_t, t) for standardised embeddings h (B, D)."""

    @register_to_config
    def __init__(
        self,
        embedding_dim: int,          # D
        width: int = 1024,           # hidden width of every block
        num_blocks: int = 6,         # residual blocks
        dropout: float = 0.0,        # dropout inside each block
    ):
        super().__init__()
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(256, width)
        self.proj_in = nn.Linear(embedding_dim, width)
        self.blocks = nn.ModuleList(PriorBlock(width, width, dropout) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, embedding_dim)
        self.register_buffer("embedding_mean", torch.zeros(embedding_dim))
        self.register_buffer("embedding_std", torch.ones(embedding_dim))

    def forward(self, h_t, timestep):  # (B, D), (B,) -> eps (B, D)
        temb = self.time_embedding(self.time_proj(torch.as_tensor(timestep, device=h_t.device).expand(len(h_t))))
        x = self.proj_in(h_t)  # (B, W)
        for block in self.blocks:
            x = block(x, temb)
        return self.proj_out(self.norm_out(x))

    set_embedding_stats = EmbeddingCondition.set_embedding_stats  # the denoiser's standardisation, same buffers

    def standardise(self, h):
        return (h.float() - self.embedding_mean) / self.embedding_std

    def unstandardise(self, z):
        return z * self.embedding_std + self.embedding_mean


CLIP = 5.0  # x0 is clipped to +-5 standard deviations: at t ~ T the eps -> x0 division amplifies any error


def prior_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                         clip_sample=True, clip_sample_range=CLIP, timestep_spacing="trailing")


class Prior:
    """A trained PriorMLP and its scheduler: draws embeddings h (N, D) in the encoder's own units."""

    def __init__(self, model: PriorMLP, scheduler: DDPMScheduler | None = None):
        self.model, self.scheduler = model.eval(), scheduler or prior_scheduler()

    @property
    def dim(self) -> int:
        return self.model.config.embedding_dim

    @classmethod
    def from_pretrained(cls, path) -> "Prior":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no prior here (config.json missing); train one with `rcdm train-prior`")
        # float32 whatever the file holds (the shipped prior is stored in float16)
        return cls(PriorMLP.from_pretrained(path, torch_dtype=torch.float32), DDPMScheduler.from_pretrained(path))

    def save_pretrained(self, path, info: dict | None = None, dtype: torch.dtype | None = None) -> None:
        """Write model + scheduler into `path` atomically (a temporary directory, then a rename); `dtype` e.g.
        float16 halves the file (it is loaded back in float32)."""
        tmp = fresh_tmp_dir(path)
        model = self.model if dtype is None else copy.deepcopy(self.model).to(dtype)
        model.save_pretrained(tmp, safe_serialization=True)
        self.scheduler.save_pretrained(tmp)
        (tmp / "prior_info.json").write_text(json.dumps(info or {}, indent=2))
        replace_dir(tmp, path)

    @torch.no_grad()
    def sample(self, n: int, generator=None, steps: int = 50, near: torch.Tensor | None = None,
               strength: float = 1.0) -> torch.Tensor:
        """n embeddings (n, D). With `near` (D,) or (n, D): start from it noised to `strength` of the way to pure
        noise and denoise back (strength 1 = an unconditional draw, 0 = `near` itself)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        dev = self.model.device
        sched = copy.deepcopy(self.scheduler)  # set_timesteps mutates; concurrent callers share the Prior
        sched.set_timesteps(steps, device=dev)
        z = torch.randn(n, self.dim, generator=generator).to(dev)  # (n, D)
        timesteps = sched.timesteps
        if near is not None and strength < 1.0:
            start = int(round(len(timesteps) * (1 - strength)))
            timesteps = timesteps[start:]
            if len(timesteps) == 0:
                return near.expand(n, -1).clone().float()
            z0 = self.model.standardise(near.to(dev).expand(n, -1))
            z = sched.add_noise(z0, z, timesteps[:1].expand(n))
        for t in timesteps:
            z = sched.step(self.model(z, t.expand(n)), t, z, generator=generator).prev_sample
        return self.model.unstandardise(z)


# ------------------------------------------------------------------------------------------------ objective
def prior_loss(model: PriorMLP, sched: DDPMScheduler, z0: torch.Tensor, generator) -> torch.Tensor:
    """eps-MSE on standardised embeddings z0 (B, D), timesteps uniform (Ho et al. 2020, Eq. 14); the trainer is
    `rcdm.training.prior`."""
    t = torch.randint(0, sched.config.num_train_timesteps, (len(z0),), generator=generator).to(z0.device)
    noise = torch.randn(z0.shape, generator=generator).to(z0)
    return F.mse_loss(model(sched.add_noise(z0, noise, t), t).float(), noise.float())


# ------------------------------------------------------------------------------------------------ measurement
def evaluate_prior(prior: Prior, cache_path: str, n: int = 2000, seed: int = 0, steps: int = 50) -> dict:
    """FD between n sampled and n real embeddings beside real vs real at the same n, and the kNN class histogram of
    the samples (k=20, cosine, fitted on the cache's labels) against the real class balance."""
    cache = EmbeddingCache.load(cache_path)
    g = torch.Generator().manual_seed(seed)
    real = cache.embeddings[:, 0].float()  # (N, D), one view per image
    perm = torch.randperm(len(real), generator=g)
    a, b = real[perm[:n]], real[perm[n:2 * n]]
    h = prior.sample(n, generator=g, steps=steps).cpu()
    labels = cache.labels
    num_classes = int(labels.max()) + 1 if (labels >= 0).all() else 0
    out = {"n": n, "steps": steps, "fd_samples_vs_real": frechet_distance(h, a),
           "fd_real_vs_real": frechet_distance(b, a)}
    if num_classes:
        pred = knn_predict(real[perm[2 * n:]], labels[perm[2 * n:]], h, num_classes=num_classes)
        out["class_histogram_samples"] = torch.bincount(pred, minlength=num_classes).div(n).tolist()
        out["class_histogram_real"] = torch.bincount(labels, minlength=num_classes).div(len(labels)).tolist()
    return out
