"""ViT read-outs: where a vision transformer's token sequences live, and how a (B, N, D) sequence becomes (B, D).

Layers every ViT backbone (timm or `hf:`) accepts, D = the model's width (384 for ViT-S, 768 for ViT-B):

    cls        the CLS token of the final token sequence                        (B, D); refused without a CLS token
    mean       the mean of the final patch tokens (no CLS, no register tokens)  (B, D)
    cls+mean   both, concatenated                                              (B, 2D)
    blocks.N   block N's output tokens (0 <= N < depth, before any final norm), pooled as the model pools: its CLS
               token, or the patch mean for models without one (I-JEPA, SigLIP)  (B, D)

"The final token sequence" is what the library returns as its last tokens (timm `forward_features`, transformers
`last_hidden_state`): normed for every family except CLIP, whose post-layernorm acts on the pooled token only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TokenLayout:
    """Where a ViT backbone's tokens are, as module paths relative to the backbone."""

    blocks: str  # the nn.ModuleList of transformer blocks
    final: str  # the module whose output is the final (B, N, D) token sequence
    num_prefix: int  # CLS + register tokens in front of the patch tokens
    has_cls: bool

    @property
    def default_pool(self) -> str:
        return "cls" if self.has_cls else "mean"


def token_layout(backbone: nn.Module) -> TokenLayout | None:
    """The layout of a ViT backbone: declared by `hf:` trunks, read off timm VisionTransformers; None otherwise."""
    declared = getattr(backbone, "token_layout", None)
    if isinstance(declared, TokenLayout):
        return declared
    if all(hasattr(backbone, a) for a in ("blocks", "norm", "num_prefix_tokens")):  # timm ViT-likes (DINO, MAE, ...)
        has_cls = getattr(backbone, "has_class_token", getattr(backbone, "cls_token", None) is not None)
        return TokenLayout("blocks", "norm", int(backbone.num_prefix_tokens), bool(has_cls))
    return None


def pool_tokens(tokens: torch.Tensor, how: str, num_prefix: int) -> torch.Tensor:
    """(B, N, D) -> (B, D): the CLS token (index 0) or the mean of the patch tokens after `num_prefix` tokens."""
    return tokens[:, 0] if how == "cls" else tokens[:, num_prefix:].mean(dim=1)


def resolve_vit_layer(net: nn.Module, layout: TokenLayout, name: str, spec: str) -> tuple[nn.Module, str] | None:
    """'cls' / 'mean' / 'blocks.N' -> (module to hook, pooling); None for any other name."""
    if name in ("cls", "mean"):
        if name == "cls" and not layout.has_cls:
            raise ValueError(f"{spec}: this model has no CLS token; use layer 'mean' (patch-token average)")
        return net.backbone.get_submodule(layout.final), name
    index = name[len("blocks."):]
    if not name.startswith("blocks.") or not index.isdigit():  # e.g. timm's 'blocks.3.mlp': a plain module name
        return None
    blocks = net.backbone.get_submodule(layout.blocks)
    if int(index) >= len(blocks):
        raise ValueError(f"{spec}: unknown layer {name!r}; this ViT has blocks.0 ... blocks.{len(blocks) - 1}")
    return blocks[int(index)], layout.default_pool
