"""`rcdm pretrain`'s config: torch-free, so `rcdm pretrain --help` lists its fields without importing torch;
`rcdm.ssl.train_ssl` runs it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SSLConfig:
    """`rcdm pretrain`: SimCLR on a CIFAR-stem ResNet-18 for a wall-clock or step budget; each field is a flag."""

    data: str = field(metadata={"help": "packed-JPEG npz, image folder or torchvision:NAME:ROOT (train split)"})
    out: str = field(metadata={"help": "output directory (config.json + model.safetensors)"})
    width: int = field(default=32, metadata={"help": "ResNet-18 first-stage width (64 = full width)"})
    proj_hidden: int = field(default=512, metadata={"help": "projector hidden width"})
    proj_out: int = field(default=128, metadata={"help": "projector output width"})
    batch_size: int = field(default=256, metadata={"help": "images per step (2 views each)"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW weight decay"})
    temperature: float = field(default=0.2, metadata={"help": "NT-Xent temperature"})
    minutes: float = field(default=40.0, metadata={"help": "wall-clock budget; the cosine schedule is fit to it"})
    max_steps: int = field(default=0, metadata={"help": "step budget (0 = none); with both budgets the schedule "
                                                        "follows whichever runs out first"})
    warmup_steps: int = field(default=100, metadata={"help": "linear LR warmup steps"})
    resolution: int = field(default=32, metadata={"help": "training resolution"})
    threads: int = field(default=0, metadata={"help": "torch threads (0 = torch default)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast"})
    test_data: str = field(default="", metadata={"help": "held-out split for the kNN report (e.g. file.npz:test)"})
    init_from: str = field(default="", metadata={"help": "encoder directory to continue from (a new stint: fresh "
                                                         "optimizer, re-warmed schedule)"})
    save_dtype: str = field(default="float32", metadata={"help": "dtype of the saved weights (float16 halves the "
                                                                 "file; it is loaded back into float32)",
                                                         "choices": ["float32", "float16"]})
