"""The reference RCDM denoiser (guided-diffusion's ADM `UNetModel` as facebookresearch/RCDM trains it), built from
diffusers blocks so that the published checkpoints convert into it key for key (`rcdm.convert`).

    emb = time_embed(timestep_embedding(t)) + ssl_emb(h)          # ssl_emb: one Linear(ssl_dim, 4 * C)
    every ResBlock: GN(x) * (1 + scale) + shift, with (scale, shift) = Linear(SiLU(emb))   ("scale_shift")

What makes it ADM rather than the CIFAR `RCDMUNet` (Dhariwal & Nichol 2021, Sec. 3): ResBlocks that resample
(avg-pool down, nearest up) instead of strided/transposed convolutions, self-attention in the middle block and at
the levels in `attention_levels` with a fixed number of heads (`num_heads`, so the head width grows with the
channels), GroupNorm eps 1e-5, and 6 output channels: eps and the interpolation weight v of the learned variance
(Nichol & Dhariwal 2021, Eq. 15), read by DDPMScheduler(variance_type="learned_range").
"""
from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block

from .conditioning import EmbeddingCondition, RCDMUNetOutput

EPS = 1e-5  # guided-diffusion's GroupNorm32 default (diffusers' blocks default to 1e-6)


class ADMUNet(EmbeddingCondition, ModelMixin, ConfigMixin):
    """eps (and the learned variance) from (x_t, t, h), with the `RCDMUNet` calling convention
    `unet(sample, timestep, embedding, drop_mask=None)`, so `RCDMPipeline` samples from either."""

    @register_to_config
    def __init__(
        self,
        embedding_dim: int = 2048,                          # ssl_dim: size of the frozen embedding h
        sample_size: int = 128,                             # image resolution R
        model_channels: int = 256,                          # C: width of the first level
        channel_mult: tuple = (1, 1, 2, 3, 4),              # level widths = C * mult
        num_res_blocks: int = 2,                            # ResBlocks per level on the way down (+1 on the way up)
        attention_levels: tuple = (2, 3, 4),                # levels with self-attention (ds 4, 8, 16 at 128 px)
        num_heads: int = 4,                                 # attention heads, whatever the width
        dropout: float = 0.0,                               # ResBlock dropout
        learn_sigma: bool = True,                           # 6 output channels: eps, then the variance weight v
        learned_null: bool = False,                         # a learned "no condition" h for classifier-free guidance
        prediction_type: str = "epsilon",                   # the reference predicts eps
    ):
        super().__init__()
        if prediction_type != "epsilon" and learn_sigma:
            raise ValueError("a learned variance (learn_sigma) goes with prediction_type='epsilon', as in ADM")
        widths = [model_channels * m for m in channel_mult]
        temb = 4 * model_channels
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        self.time_proj = Timesteps(model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)  # [cos, sin]
        self.time_embedding = TimestepEmbedding(model_channels, temb)
        self.ssl_emb = nn.Linear(embedding_dim, temb)
        self.init_condition(embedding_dim, learned_null)
        common = dict(temb_channels=temb, resnet_eps=EPS, resnet_act_fn="silu", resnet_groups=32,
                      resnet_time_scale_shift="scale_shift", dropout=dropout)
        self.down_blocks = nn.ModuleList()
        for i, w in enumerate(widths):
            attn = i in attention_levels
            self.down_blocks.append(get_down_block(
                "AttnDownBlock2D" if attn else "ResnetDownsampleBlock2D", num_layers=num_res_blocks,
                in_channels=widths[max(i - 1, 0)], out_channels=w, add_downsample=i < len(widths) - 1,
                attention_head_dim=w // num_heads, downsample_type="resnet", **common))
        self.mid_block = UNetMidBlock2D(widths[-1], temb, dropout, resnet_eps=EPS, resnet_time_scale_shift="scale_shift",
                                        resnet_act_fn="silu", resnet_groups=32, attn_groups=32,
                                        attention_head_dim=widths[-1] // num_heads)
        self.up_blocks = nn.ModuleList()
        rev = widths[::-1]
        for i, w in enumerate(rev):
            attn = (len(widths) - 1 - i) in attention_levels
            self.up_blocks.append(get_up_block(
                "AttnUpBlock2D" if attn else "ResnetUpsampleBlock2D", num_layers=num_res_blocks + 1,
                in_channels=rev[min(i + 1, len(rev) - 1)], out_channels=w, prev_output_channel=rev[max(i - 1, 0)],
                add_upsample=i < len(rev) - 1, attention_head_dim=w // num_heads, upsample_type="resnet", **common))
        self.conv_norm_out = nn.GroupNorm(32, widths[0], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], 6 if learn_sigma else 3, 3, padding=1)

    def forward(self, sample, timestep, embedding, drop_mask=None, return_dict=True):
        """sample (B, 3, R, R), timestep (B,) or scalar, embedding (B, D) -> (B, 6 | 3, R, R)."""
        t = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])  # (B,)
        emb = self.time_embedding(self.time_proj(t).to(self.dtype))  # (B, 4C)
        emb = emb + self.ssl_emb(self.condition(embedding, drop_mask))  # (B, 4C)
        x = self.conv_in(sample.to(self.dtype))  # (B, C, R, R)
        skips = (x,)
        for block in self.down_blocks:
            x, res = block(hidden_states=x, temb=emb)
            skips += res
        x = self.mid_block(x, emb)  # (B, C * mult[-1], R / 2^(L-1), ...)
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            x = block(x, res, emb)
        out = self.conv_out(self.conv_act(self.conv_norm_out(x)))  # (B, 6 | 3, R, R)
        return RCDMUNetOutput(sample=out) if return_dict else (out, None)
