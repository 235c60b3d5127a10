"""The training objective as one small callable (EDM2 style): `loss = RCDMLoss(...)(unet, x0, h, generator)`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from .schedulers import training_scheduler


@dataclass
class RCDMLoss:
    """MSE on eps or v with min-SNR-gamma weighting (Hang et al. 2023, Eq. 8), condition dropout for
    classifier-free guidance, plus the mean decoder's MSE. Timesteps, noise and dropout are drawn from
    `generator` in that order, so a seeded generator fixes the loss exactly."""

    prediction_type: str = "v_prediction"  # "epsilon" or "v_prediction": the target the UNet regresses
    snr_gamma: float = 5.0                 # min-SNR-gamma clamp; 0 = uniform weights
    cond_drop_prob: float = 0.1            # P(h -> learned null embedding)
    mean_loss_weight: float = 1.0          # weight of D(h)'s MSE to x0 (only if the UNet has a mean decoder)
    noise_scheduler: object = field(default=None, repr=False)  # forward process; default: the training schedule

    def __post_init__(self):
        if self.noise_scheduler is None:
            self.noise_scheduler = training_scheduler(self.prediction_type)

    def __call__(self, unet, x0: torch.Tensor, h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, sched = x0.shape[0], self.noise_scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=generator).to(x0.device)  # (B,)
        noise = torch.randn(x0.shape, generator=generator).to(x0)  # (B, 3, R, R)
        drop = (torch.rand(b, generator=generator) < self.cond_drop_prob).to(x0.device)  # (B,)
        x_t = sched.add_noise(x0, noise, t)
        out = unet(x_t, t, h, drop_mask=drop)
        target = noise if self.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        per_sample = F.mse_loss(out.sample.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
        loss = (per_sample * self.weight(t)).mean()
        if out.mean is not None:
            loss = loss + self.mean_loss_weight * F.mse_loss(out.mean.float(), x0.float())
        return loss

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """min(SNR, gamma) / SNR for eps targets, min(SNR, gamma) / (SNR + 1) for v targets; ones if gamma = 0."""
        if not self.snr_gamma:
            return torch.ones_like(t, dtype=torch.float32)
        snr = compute_snr(self.noise_scheduler, t)  # (B,)
        clipped = snr.clamp(max=self.snr_gamma)
        return clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)
