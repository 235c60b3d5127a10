"""`rcdm train`'s config: `TrainConfig`, its named presets, and how a preset, a YAML file and flags combine.

Torch-free, so `rcdm train --help` lists every field without importing torch; `rcdm.train` runs it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .choices import DEFAULT_SAMPLING
from .config import dataclass_from_args, dataclass_from_dict
from .unet_config import UNetConfig


@dataclass
class TrainConfig:
    """Everything a training run needs. Presets fill it; a YAML file and flags override fields."""

    data: str = field(default="", metadata={"help": "training images: file.npz[:split], image folder, WebDataset tar shards (wds:PATTERN.tar or a folder of .tar) or torchvision:NAME:ROOT"})
    cache: str = field(default="", metadata={"help": "embedding cache from `rcdm embed` for the same data; several, "
                                                     "comma-separated (one per encoder layer), train one RCDM each "
                                                     "into output_dir/<layer>"})
    output_dir: str = field(default="runs/rcdm", metadata={"help": "checkpoints, logs, samples and the exported pipeline"})
    resolution: int = field(default=32, metadata={"help": "image resolution the UNet sees"})
    unet: UNetConfig = field(default_factory=UNetConfig)
    mean_loss_weight: float = field(default=1.0, metadata={"help": "weight of the mean decoder's MSE"})
    snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR-gamma loss weighting (0 = uniform)"})
    beta_schedule: str = field(default="linear", metadata={"help": "noise schedule (diffusers beta_schedule)"})
    cond_drop_prob: float = field(default=0.1, metadata={"help": "P(embedding -> null) for classifier-free guidance"})
    repa_weight: float = field(default=0.0, metadata={
        "help": "weight of the REPA term (Yu et al. 2024): the UNet's mid-block, through a small projector, is "
                "aligned (cosine per location) with the frozen encoder's feature map of the clean image; 0 = off"})
    repa_layer: str = field(default="backbone.layer4", metadata={
        "help": "encoder module whose (B, C, h, w) output is the REPA target (default: a ResNet's last stage)"})
    batch_size: int = field(default=32, metadata={"help": "images per process per micro-batch; with "
                                                          "--global-batch-size, the largest one allowed"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps (derived when "
                                                         "--global-batch-size is set)"})
    global_batch_size: int = field(default=0, metadata={
        "help": "images per optimizer step over all processes (0 = off: --batch-size x --grad-accum per process). "
                "The per-device batch (at most --batch-size) and the accumulation are derived from the number of "
                "processes and logged"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=200, metadata={"help": "linear LR warmup (optimizer steps)"})
    lr_schedule: str = field(default="constant", metadata={
        "help": "LR after the warmup: constant, or decayed to 0 at --max-steps (cosine, linear); a decay suits a "
                "final stint whose step count is known", "choices": ["constant", "cosine", "linear"]})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to train"})
    max_minutes: float = field(default=0.0, metadata={"help": "also stop (with a checkpoint) after this wall time (0 = off)"})
    ema_decay: float = field(default=0.9999, metadata={"help": "maximum EMA decay (warmup 1-(1+step)^-power)"})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warmup power"})
    posthoc_ema: tuple[float, ...] = field(default=(), metadata={
        "help": "also keep power-function EMAs of these relative lengths sigma_rel (at least two, e.g. 0.05 0.10) "
                "and save them every --posthoc-ema-every steps, so that `rcdm posthoc-ema` can make the EMA of any "
                "length after training (EDM2, Karras et al. 2024); off by default"})
    posthoc_ema_every: int = field(default=0, metadata={
        "help": "steps between post-hoc EMA snapshots (0 = --checkpoint-every); each costs one fp32 copy of the "
                "denoiser per sigma_rel on disk"})
    mixed_precision: str = field(default="bf16", metadata={"help": "no, bf16 or fp16 (fp16 needs a GPU)",
                                                           "choices": ["no", "bf16", "fp16"]})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format (0.82x on a 2-core "
                                                                 "CPU; unmeasured on GPUs)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers per process"})
    preload_images: bool = field(default=False, metadata={
        "help": "decode every training image once, at the training resolution, into memory (3 x R x R bytes each: "
                "150 MB for CIFAR-10 at 32 px), so that an item costs no JPEG decode; for small data and fast GPUs"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    checkpoint_every: int = field(default=500, metadata={"help": "save a resumable checkpoint every N steps"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    resume: str = field(default="", metadata={
        "help": "continue a run exactly: 'auto' (the latest checkpoint if there is one, else a fresh start: one "
                "command for the first run and every requeue), 'latest' (one must exist) or a checkpoint directory"})
    init_from: str = field(default="", metadata={"help": "pipeline directory to start from (new optimizer, re-warmed)"})
    grow_attention: tuple[int, ...] = field(default=(), metadata={
        "help": "with --init-from: add self-attention at these UNet levels (0 = full resolution), starting as the "
                "identity (zero output projection), so the stint continues from the loaded model's exact function"})
    log_every: int = field(default=50, metadata={"help": "log losses every N steps (the only steps that wait for "
                                                         "the loss across processes)"})
    report_to: str = field(default="tensorboard", metadata={
        "help": "where the logs go: tensorboard, wandb (pip install wandb; WANDB_MODE=offline logs without a "
                "network) or all (both)", "choices": ["tensorboard", "wandb", "all"]})
    sync_every: int = field(default=10, metadata={"help": "agree signals and --max-minutes across processes every N "
                                                          "steps (a single process checks every step)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the denoiser (slow first steps; "
                                                           "unmeasured on GPUs)"})
    sample_every: int = field(default=500, metadata={"help": "write a sample grid every N steps (0 = off)"})
    sample_steps: int = field(default=20, metadata={"help": "sampler steps for logged sample grids (the default sampler, "
                                                            f"{DEFAULT_SAMPLING['scheduler'].upper()})"})
    eval_data: str = field(default="auto", metadata={
        "help": "held-out images for the sample grids and --eval-every: a data spec; 'auto' = the test split of a "
                "training .npz that has one, else grids show training images; 'none' = off"})
    eval_every: int = field(default=0, metadata={"help": "every N steps, sample once from each of --eval-images "
                                                         "held-out embeddings and log their mean rank and top-1 (0 = off)"})
    eval_images: int = field(default=64, metadata={"help": "held-out images scored by --eval-every (rank chance: (N+1)/2)"})
    export_dtype: str = field(default="float32", metadata={"help": "dtype of exported weights: float32, float16",
                                                           "choices": ["float32", "float16", "bfloat16"]})


PRESETS = {
    # Small and CPU-friendly: v-prediction, min-SNR-5, batch 32, lr 1e-3 with warmup gave a 4x better mean rank
    # than eps / batch 128 / 3e-4 for less CPU time, measured on the 2-core CPU the shipped models were trained on.
    "cifar10-32": TrainConfig(),
    # The reference network exactly (facebookresearch/RCDM MODEL_FLAGS_128, rcdm.adm: 422,603,782 parameters at
    # ssl_dim 2048): 256 base channels, mult (1, 1, 2, 3, 4), attention at 32/16/8 px with 4 heads, ResBlock
    # resampling, eps with a learned variance trained by the hybrid loss, uniform weights; AdamW 1e-4, EMA 0.9999,
    # batch 256 in total (at most 8 per device, as on the reference's 32 V100s). Beyond the reference: condition
    # dropout 0.1 (a learned null h) for guidance.
    "imagenet-128": TrainConfig(
        resolution=128, unet=UNetConfig(arch="adm", block_out_channels=(256, 256, 512, 768, 1024), layers_per_block=2,
                                        attention_levels=(2, 3, 4), num_heads=4, mean_decoder=False,
                                        prediction_type="epsilon", learn_sigma=True),
        snr_gamma=0.0, mean_loss_weight=0.0, global_batch_size=256, batch_size=8, lr=1e-4, warmup_steps=1000,
        max_steps=600_000, ema_power=2 / 3, checkpoint_every=5000, sample_every=5000, num_workers=8, sample_steps=50,
    ),
}


def load_config(preset: str | None, yaml_path: str | None, args) -> TrainConfig:
    """preset < YAML file < flags."""
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset or "cifar10-32"]
    if yaml_path:
        import yaml

        cfg = dataclass_from_dict(TrainConfig, yaml.safe_load(Path(yaml_path).read_text()) or {}, cfg, yaml_path)
    return dataclass_from_args(TrainConfig, args, base=cfg)
