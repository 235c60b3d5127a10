"""`rcdm train-prior`'s config: torch-free, so `rcdm train-prior --help` lists its fields without importing
torch; `rcdm.prior.train_prior` runs it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PriorConfig:
    """`rcdm train-prior`: a prior on the embeddings of an `rcdm embed` cache (both views of every image)."""

    cache: str = field(default="", metadata={"help": "embedding cache from `rcdm embed`"})
    output_dir: str = field(default="runs/prior", metadata={"help": "checkpoints and the exported prior"})
    model: str = field(default="", metadata={"help": "also install the prior into this RCDM pipeline directory (its "
                                                     "encoder and layer must match the cache's)"})
    width: int = field(default=1024, metadata={"help": "MLP width"})
    num_blocks: int = field(default=6, metadata={"help": "residual blocks"})
    dropout: float = field(default=0.0, metadata={"help": "dropout inside each block"})
    batch_size: int = field(default=256, metadata={"help": "embeddings per process per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=100, metadata={"help": "linear LR warmup steps"})
    lr_schedule: str = field(default="cosine", metadata={"help": "constant, cosine or linear (to 0 at --max-steps)",
                                                         "choices": ["constant", "cosine", "linear"]})
    max_steps: int = field(default=3000, metadata={"help": "optimizer steps"})
    ema_decay: float = field(default=0.999, metadata={"help": "maximum EMA decay"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    checkpoint_every: int = field(default=1000, metadata={"help": "resumable checkpoint every N steps"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    resume: str = field(default="", metadata={"help": "'latest' or a checkpoint directory"})
    log_every: int = field(default=100, metadata={"help": "log the loss every N steps (the only steps that read it)"})
    sync_every: int = field(default=10, metadata={"help": "agree signals across processes every N steps (a single "
                                                          "process checks every step)"})
    mixed_precision: str = field(default="bf16", metadata={"help": "no, bf16 or fp16 (fp16 needs a GPU)",
                                                           "choices": ["no", "bf16", "fp16"]})
    grad_accum: int = field(default=1, metadata={"cli": False})  # what the shared Accelerator setup reads
