"""How a denoiser takes its condition h, and what it returns: shared by `RCDMUNet` (rcdm.model) and the reference
`ADMUNet` (rcdm.adm), so neither imports the other."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.utils import BaseOutput


@dataclass
class RCDMUNetOutput(BaseOutput):
    """`sample`: the eps or v prediction (B, 3, R, R). `mean`: D(h), the mean-decoder image, or None. `align`: the
    REPA projection of the mid-block features, or None."""

    sample: torch.Tensor
    mean: torch.Tensor | None = None
    align: torch.Tensor | None = None  # REPA projector output (B, C_enc, r, r), in training mode only


class EmbeddingCondition:
    """How a denoiser takes h: standardised per dimension, with an optional learned null embedding substituted for
    the rows a `drop_mask` selects (classifier-free guidance). Shared by RCDMUNet and the reference ADMUNet."""

    def init_condition(self, embedding_dim: int, learned_null: bool) -> None:
        self.null_embedding = nn.Parameter(torch.zeros(embedding_dim)) if learned_null else None
        # Per-dimension standardisation of h, set from the training embeddings: SSL features range from
        # post-ReLU averages (~0..5) to unit-norm vectors, and the projection MLP trains far better on z-scores.
        # Identity unless set (the published RCDMs feed raw features).
        self.register_buffer("embedding_mean", torch.zeros(embedding_dim))
        self.register_buffer("embedding_std", torch.ones(embedding_dim))

    def set_embedding_stats(self, embeddings: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                            std: torch.Tensor | None = None):
        """Standardise h with the mean/std of the training embeddings (N, D), or with their stored (D,) mean and std
        (an embedding cache keeps them, so training need not read every row)."""
        if embeddings is not None:
            mean, std = embeddings.float().mean(0), embeddings.float().std(0)
        self.embedding_mean.copy_(mean)
        self.embedding_std.copy_(std.clamp_min(1e-6))

    def condition(self, embedding, drop_mask=None):
        """Standardised h (B, D), with rows in `drop_mask` (B,) replaced by the learned null embedding."""
        if embedding.ndim != 2 or embedding.shape[1] != self.config.embedding_dim:
            raise ValueError(f"expected embeddings of shape (B, {self.config.embedding_dim}), "
                             f"got {tuple(embedding.shape)}")
        h = (embedding.to(self.embedding_mean) - self.embedding_mean) / self.embedding_std
        if drop_mask is None:
            return h.to(self.dtype)
        if self.null_embedding is None:
            if bool(drop_mask.any()):
                raise ValueError("this model was trained without a null condition (like the published RCDM "
                                 "checkpoints), so classifier-free guidance is unavailable: use guidance_scale=1")
            return h.to(self.dtype)
        # Always in the graph, even when no row is dropped: DDP expects a gradient for every parameter at every step
        h = torch.where(drop_mask.view(-1, 1).to(h.device), self.null_embedding.to(h), h)
        return h.to(self.dtype)
