"""The training objective as one small callable (EDM2 style): `loss = RCDMLoss(...)(unet, x0, h, generator)`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from .align import alignment_loss
from .schedulers import training_scheduler


@dataclass
class RCDMLoss:
    """MSE on eps or v with min-SNR-gamma weighting (Hang et al. 2023, Eq. 8), condition dropout for
    classifier-free guidance, plus the mean decoder's MSE and, optionally, REPA's alignment term (rcdm.align). Timesteps, noise and dropout are drawn from
    `generator` in that order, so a seeded generator fixes the loss exactly."""

    prediction_type: str = "v_prediction"  # "epsilon" or "v_prediction": the target the UNet regresses
    snr_gamma: float = 5.0                 # min-SNR-gamma clamp; 0 = uniform weights
    cond_drop_prob: float = 0.1            # P(h -> learned null embedding)
    mean_loss_weight: float = 1.0          # weight of D(h)'s MSE to x0 (only if the UNet has a mean decoder)
    noise_scheduler: object = field(default=None, repr=False)  # forward process; default: the training schedule
    align_target: object = field(default=None, repr=False)  # REPA: x0 -> frozen encoder map (rcdm.align.SpatialTarget)
    align_weight: float = 0.0              # lambda of the REPA term (Yu et al. 2024 use 0.5)

    def __post_init__(self):
        if self.noise_scheduler is None:
            self.noise_scheduler = training_scheduler(self.prediction_type)

    def __call__(self, unet, x0: torch.Tensor, h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, sched, dev = x0.shape[0], self.noise_scheduler, generator.device
        # drawn where the generator lives: training passes one on the accelerator, so no host RNG or copy per step
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator, device=dev).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=dev).to(x0)  # (B, 3, R, R)
        drop = (torch.rand(b, generator=generator, device=dev) < self.cond_drop_prob).to(x0.device)  # (B,)
        x_t = sched.add_noise(x0, noise, t)
        out = unet(x_t, t, h, drop_mask=drop)
        pred, var = out.sample.float().split(x0.shape[1], dim=1) if out.sample.shape[1] == 2 * x0.shape[1] \
            else (out.sample.float(), None)  # an ADM's 6 channels: eps, then the variance weight v
        target = noise if self.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
        if var is not None:  # L_hybrid = L_simple + lambda * L_vlb (Nichol & Dhariwal 2021, Sec. 3.1)
            per_sample = per_sample + vlb_term(sched, x0.float(), x_t.float(), t, pred.detach(), var)
        loss = (per_sample * self.weight(t)).mean()
        if out.mean is not None:
            loss = loss + self.mean_loss_weight * F.mse_loss(out.mean.float(), x0.float())
        if self.align_weight and getattr(out, "align", None) is not None:
            loss = loss + self.align_weight * alignment_loss(out.align, self.align_target(x0))
        return loss

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """min(SNR, gamma) / SNR for eps targets, min(SNR, gamma) / (SNR + 1) for v targets; ones if gamma = 0."""
        if not self.snr_gamma:
            return torch.ones_like(t, dtype=torch.float32)
        snr = compute_snr(self.noise_scheduler, t)  # (B,)
        clipped = snr.clamp(max=self.snr_gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)


def vlb_term(sched, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
             v: torch.Tensor) -> torch.Tensor:
    """L_t of the variational bound in bits per dimension, (B,), for a model with a learned variance.

    The mean comes from the (detached) eps prediction, so this term trains only the variance: Sigma =
    exp(v' log beta_t + (1 - v') log beta~_t), v' = (v + 1) / 2 (Nichol & Dhariwal 2021, Eq. 15). For t > 0 it is
    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)); for t = 0 the discretised Gaussian decoder NLL (Ho et al. 2020,
    Eq. 13). lambda = 0.001 times T = 1000 timesteps makes the per-timestep weight 1, as in the reference."""
    ac = sched.alphas_cumprod.to(x0.device)
    b = sched.betas.to(x0.device)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    post_var = b * (1 - ac_prev) / (1 - ac)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # clipped: beta~_0 = 0 replaced by beta~_1
    c0, ct = b * ac_prev.sqrt() / (1 - ac), (1 - ac_prev) * (1 - b).sqrt() / (1 - ac)  # posterior mean coefficients

    def at(a):  # (T,) -> (B, 1, 1, 1) at t
        return a[t].view(-1, 1, 1, 1)

    x0_pred = ((x_t - at((1 - ac).sqrt()) * eps) / at(ac.sqrt())).clamp(-1, 1)
    mean_q, mean_p = at(c0) * x0 + at(ct) * x_t, at(c0) * x0_pred + at(ct) * x_t
    frac = (v + 1) / 2
    logvar_p = frac * at(torch.log(b)) + (1 - frac) * at(post_logvar)
    logvar_q = at(post_logvar).expand_as(logvar_p)
    kl = 0.5 * (-1 + logvar_p - logvar_q + torch.exp(logvar_q - logvar_p) + (mean_q - mean_p) ** 2 * torch.exp(-logvar_p))
    nll = -_discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * logvar_p)
    per_dim = torch.where(at(torch.arange(len(ac), device=x0.device)) == 0, nll, kl) / math.log(2.0)
    return per_dim.mean(dim=(1, 2, 3))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor):
    """log p(x) of [-1, 1] images quantised to 256 bins under N(mean, exp(log_scale)^2) (Ho et al. 2020, Eq. 13)."""
    normal = torch.distributions.Normal(mean, torch.exp(log_scale))
    upper = torch.where(x > 0.999, torch.ones_like(x), normal.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), normal.cdf(x - 1 / 255))
    return torch.log((upper - lower).clamp(min=1e-12))
