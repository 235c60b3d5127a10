"""The denoiser's architecture as a typed config: torch-free, so `rcdm train --help` lists its fields without
importing torch. `rcdm.model.build_denoiser(cfg, ...)` builds the network it describes."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UNetConfig:
    """The denoiser's architecture besides the embedding size and resolution, which come from the data. Nested in
    `TrainConfig` as `unet`; each field is also a flat `rcdm train` flag."""

    arch: str = field(default="rcdm", metadata={"help": "rcdm: the CIFAR-scale RCDMUNet (mean decoder, v-prediction); "
                                                        "adm: the reference ADM network (rcdm.adm)",
                                                "choices": ["rcdm", "adm"]})
    block_out_channels: tuple[int, ...] = field(default=(64, 128, 128), metadata={"help": "UNet widths per level"})
    layers_per_block: int = field(default=2, metadata={"help": "ResBlocks per UNet level"})
    attention_levels: tuple[int, ...] = field(default=(), metadata={"help": "UNet levels with self-attention"})
    attention_head_dim: int = field(default=32, metadata={"help": "channels per attention head"})
    norm_num_groups: int = field(default=32, metadata={"help": "GroupNorm groups (must divide every width)"})
    dropout: float = field(default=0.0, metadata={"help": "ResBlock dropout"})
    mean_decoder: bool = field(default=True, metadata={"help": "concatenate a mean decoder D(h) to the UNet input"})
    prediction_type: str = field(default="v_prediction", metadata={"help": "epsilon or v_prediction",
                                                                   "choices": ["epsilon", "v_prediction"]})
    num_heads: int = field(default=4, metadata={"help": "adm: attention heads at every level (the head width grows)"})
    learn_sigma: bool = field(default=False, metadata={"help": "adm: learned variance (6 output channels, hybrid "
                                                               "loss, read by the DDPM sampler)"})
