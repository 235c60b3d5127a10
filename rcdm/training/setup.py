"""What the denoiser's loop trains and with what: the UNet (fresh, or grown from an --init-from model), its
objective, the optimizer, the EMA, and the frozen encoder that made the embedding cache."""
from __future__ import annotations

import torch
from diffusers.training_utils import EMAModel

from ..cache import EmbeddingCache
from ..encoders import Preprocess, load_encoder
from ..hub import resolve_model_path
from ..loss import RCDMLoss
from ..model import RCDMUNet, build_denoiser
from ..pipeline import denoiser_class
from ..sampling import seeded_generator
from ..schedulers import training_scheduler
from ..train_config import TrainConfig


def make_loss(cfg: TrainConfig, unet, align_target=None) -> RCDMLoss:
    """The objective for this run; the target is the UNet's own (an --init-from model fixes it)."""
    return RCDMLoss(unet.config.prediction_type, cfg.snr_gamma, cfg.cond_drop_prob, cfg.mean_loss_weight,
                    noise_schedule(cfg, unet), align_target=align_target, align_weight=cfg.repa_weight)


def noise_schedule(cfg: TrainConfig, unet):
    """The forward process; "learned_range" output for a network that learns its variance (the reference ADM)."""
    learned = getattr(unet.config, "learn_sigma", False)
    return training_scheduler(unet.config.prediction_type, cfg.beta_schedule,
                              variance_type="learned_range" if learned else "fixed_small")


def step_generator(cfg: TrainConfig, step: int, micro: int, rank: int,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """Noise, timesteps and dropout are a pure function of (seed, step, micro-batch, rank): exact resume needs
    no RNG state, and processes never draw the same noise. The generator lives on the training device, so the draws
    happen there (a CUDA stream is not a CPU stream: the same key gives other, equally valid noise on a GPU)."""
    return seeded_generator(cfg.seed, step, micro, rank, device=device)


def build_unet(cfg: TrainConfig, dim: int, cache: EmbeddingCache, align_dim: int = 0):
    """A fresh denoiser, or the --init-from one; `align_dim` > 0 gives it a REPA projector (kept if it has one)."""
    if cfg.init_from:
        return init_unet(cfg, dim, align_dim)
    unet = build_denoiser(cfg.unet, dim, cfg.resolution, null_embedding=cfg.cond_drop_prob > 0, align_dim=align_dim)
    mean, std = cache.embedding_stats()  # stored by `rcdm embed`: no full read of the memory-mapped cache
    unet.set_embedding_stats(mean=mean, std=std)
    return unet


def init_unet(cfg: TrainConfig, dim: int, align_dim: int = 0):
    """The --init-from model's UNet, grown by --grow-attention and a REPA projector where asked."""
    path = resolve_model_path(cfg.init_from) / "unet"
    unet = denoiser_class(path).from_pretrained(path, torch_dtype=torch.float32)
    if unet.config.embedding_dim != dim:
        raise ValueError(f"--init-from {cfg.init_from} expects {unet.config.embedding_dim}-d embeddings, "
                         f"the cache has {dim}-d ones")
    if cfg.cond_drop_prob > 0 and getattr(unet, "null_embedding", None) is None:
        raise ValueError(f"--init-from {cfg.init_from} has no learned null embedding (a converted RCDM "
                         "checkpoint), so it cannot learn to drop the condition: add --cond-drop-prob 0")
    if cfg.grow_attention:
        if not isinstance(unet, RCDMUNet):
            raise ValueError(f"--grow-attention needs an RCDMUNet; {cfg.init_from} is a {type(unet).__name__}")
        unet = unet.with_attention(cfg.grow_attention)
    if align_dim and getattr(unet.config, "align_dim", 0) != align_dim:
        if not isinstance(unet, RCDMUNet):
            raise ValueError(f"--repa-weight needs an RCDMUNet; {cfg.init_from} is a {type(unet).__name__}")
        unet = unet.with_align_head(align_dim)
    return unet


def make_optimizer(cfg: TrainConfig, unet, device: torch.device):
    """AdamW; the fused CUDA kernel on GPUs (one launch for all parameters instead of several per tensor)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def make_ema(cfg: TrainConfig, acc, unet):
    """diffusers' EMA, on the main process only (only it samples, saves and exports), updated with foreach ops."""
    if not acc.is_main_process:
        return None
    return EMAModel(acc.unwrap_model(unet).parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
                    power=cfg.ema_power, foreach=True)


def load_cache_encoder(cache: EmbeddingCache):
    """The encoder that made the cache, refused if its weights are not the ones it was made with (every rank checks,
    so all of them stop with the same error). The sample grids and the export reuse it."""
    enc = cache.meta["encoder"]
    encoder = load_encoder(enc["spec"], enc["layer"])
    cache.check_encoder(encoder)
    if cache.meta.get("matched_view"):  # encode images as the cache did: grids, held-out scores, the export
        encoder.preprocess = Preprocess.from_dict(cache.meta["encoder"]["preprocess"])
    return encoder
