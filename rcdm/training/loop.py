"""The denoiser's training loop (EDM2's `training/training_loop.py`), on one CPU, one GPU or many:

    rcdm train --preset cifar10-32 --data cifar10_jpeg.npz --cache emb.safetensors --output-dir runs/x
    accelerate launch --multi_gpu -m rcdm.train --preset imagenet-128 --data /imagenet/train --cache ...

`train` reads top to bottom: set up (`prepare`), then the runtime's loop of `train_step` and `periodic` (log lines,
sample grids, held-out scores, checkpoints), then `export`. Embeddings come from an `rcdm embed` cache, so the
encoder never runs during training (except as the REPA target).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from safetensors import safe_open
from tqdm.auto import tqdm

from ..align import SpatialTarget
from ..cache import EmbeddingCache
from ..heldout import HeldOut, resolve_spec
from ..phema import SNAPSHOT_DIR, PowerEMA
from ..train_config import TrainConfig
from .data import BatchPlan, apply_global_batch, endless_batches, make_dataloader
from .export import export
from .runtime import (Cadence, Checkpointer, LossWindow, StopRequest, enable_tf32, make_accelerator,
                      make_lr_schedule, run_loop, write_log)
from .samples import log_heldout_score, log_samples, watched_images
from .setup import build_unet, load_cache_encoder, make_ema, make_loss, make_optimizer, step_generator


def train(cfg: TrainConfig, command: str = "") -> Path | None:
    """Run the training loop; returns the exported pipeline directory, or None for a preempted run (SIGTERM: it
    stops with a checkpoint and skips the export, for `--resume auto` to continue)."""
    validate(cfg)
    # Signals are caught from the start: one that arrives during the setup (a preemption while the data loads) is
    # acted on after the first step, and SIGUSR1 never kills the run (its default action would).
    with StopRequest(preemption_skips_export=True) as request:
        run = prepare(cfg)
        step = run.ckpt.load(cfg.resume, run.ema, run.phema) if cfg.resume else 0
        run.start(step)
        step, preempted = run_loop(run.acc, Cadence(run.cfg.max_steps, cfg.sync_every, cfg.max_minutes), request,
                                   step, run.step, run.periodic)
        run.bar.close()
        if preempted:
            run.acc.print(f"preempted at step {step}: checkpoint written, export skipped; run the same command with "
                          "--resume auto to continue")
            out = None
        else:
            out = export(run.acc, run.cfg, run.unet, run.ema, run.cache, step, command, run.encoder)
        run.acc.end_training()
        return out


def train_step(unet, opt, lr_sched, batches, loss_fn, cfg, acc, step) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over `grad_accum` micro-batches. Returns this process's mean loss and the gradient norm
    before clipping (None without clipping) as device scalars: reading them would make the host wait for the step,
    so `LossWindow` does that only at log steps."""
    total, norm = 0.0, None
    for micro in range(cfg.grad_accum):
        x0, h = next(batches)
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        with acc.accumulate(unet), acc.autocast():
            loss = loss_fn(unet, x0, h, step_generator(cfg, step, micro, acc.process_index, x0.device))
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                norm = acc.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
        total = total + loss.detach().float() / cfg.grad_accum
    return total, norm


@dataclass
class Run:
    """The prepared objects of one run, and what the loop does with them at each step."""

    acc: object
    cfg: TrainConfig       # with the batch plan applied
    plan: BatchPlan
    unet: torch.nn.Module
    opt: torch.optim.Optimizer
    lr_sched: object
    loss_fn: object
    dl: object
    ema: object            # None on the processes that keep no EMA
    ckpt: Checkpointer
    cache: EmbeddingCache
    encoder: object        # None except on the main process (only it samples and exports)
    watch: HeldOut | None  # the grid's and --eval-every's images, read once
    bar: tqdm | None = None            # from `start` on
    window: LossWindow | None = None   # the losses since the last log line
    batches: object = None             # the endless, resumable batch stream
    phema: PowerEMA | None = None      # --posthoc-ema, on the main process

    def start(self, step: int) -> None:
        """Trackers, progress bar, loss window and the batch stream, from `step` on (0, or a resumed step)."""
        if self.acc.is_main_process:
            self.acc.init_trackers("rcdm", config=flat_config(self.cfg),
                                   init_kwargs={"wandb": {"dir": str(Path(self.cfg.output_dir))}})
        self.bar = tqdm(total=self.cfg.max_steps, initial=step, desc="training",
                        disable=not self.acc.is_local_main_process)
        self.window = LossWindow(self.acc, step, self.cfg.output_dir)
        self.batches = endless_batches(self.dl, step * self.cfg.grad_accum, self.acc)

    def step(self, step: int) -> None:
        """`train_step`, then the EMA: once per optimizer step, i.e. only when gradients were synced."""
        self.window.append(*train_step(self.unet, self.opt, self.lr_sched, self.batches, self.loss_fn, self.cfg,
                                       self.acc, step))
        if self.ema is not None:
            self.ema.step(self.acc.unwrap_model(self.unet).parameters())
        if self.phema is not None:
            self.phema.update(self.acc.unwrap_model(self.unet).named_parameters(), step + 1)
        self.bar.update(1)

    def periodic(self, step: int, force: bool) -> None:
        """Log line, sample grid, held-out score and checkpoint when due; `force` logs and checkpoints now."""
        cfg = self.cfg
        log_now, ckpt_now = step % cfg.log_every == 0 or force, step % cfg.checkpoint_every == 0 or force
        sample_now = bool(cfg.sample_every) and step % cfg.sample_every == 0
        eval_now = bool(cfg.eval_every) and step % cfg.eval_every == 0
        if not (log_now or sample_now or eval_now or ckpt_now):
            return
        values = self.window.reduce()  # a NaN stops the run before anything is sampled or saved
        if log_now:
            self.log(step, values)
        t = time.perf_counter()
        args = (self.acc, cfg, self.ema, self.unet, self.cache, step, self.encoder, self.watch)
        if sample_now:
            log_samples(*args)
        if eval_now:
            log_heldout_score(*args, self.bar)
        if self.phema is not None and (step % (cfg.posthoc_ema_every or cfg.checkpoint_every) == 0 or force):
            self.phema.save_snapshots(Path(cfg.output_dir) / SNAPSHOT_DIR, step)
        if ckpt_now:
            self.ckpt.save(step, self.ema, self.phema)
        self.window.pause(time.perf_counter() - t)

    def log(self, step: int, values: list[float]) -> None:
        logs = {**self.window.log_line(values, self.plan.global_batch), "lr": self.lr_sched.get_last_lr()[0]}
        if self.acc.device.type == "cuda":
            logs["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.acc.device) / 2**30
        write_log(self.acc, self.cfg.output_dir, step, logs)
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
        self.window.clear(step)


def prepare(cfg: TrainConfig) -> Run:
    """Everything a run needs, the same on every process (the EMA, encoder and watched images on the main one)."""
    acc = make_accelerator(cfg.mixed_precision, cfg.output_dir, cfg.grad_accum, cfg.seed, cfg.report_to)
    cfg, plan = apply_global_batch(cfg, acc.num_processes)
    acc.gradient_accumulation_steps = cfg.grad_accum
    acc.print(plan.describe())
    enable_tf32(acc.device)
    cache = EmbeddingCache.load(cfg.cache)
    encoder = load_cache_encoder(cache)  # before the seed: building it may draw from the global RNG
    align_target = SpatialTarget(encoder.to(acc.device), cfg.repa_layer) if cfg.repa_weight else None
    encoder = encoder if acc.is_main_process else None  # every rank checked it; only the main one samples
    set_seed(cfg.seed)  # same initial weights on every process and every run
    unet = build_unet(cfg, cache.dim, cache, align_target.channels if align_target else 0)
    if cfg.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if cfg.compile:
        unet.compile()  # in place: parameter names, the EMA and checkpoints stay those of the eager module
    loss_fn = make_loss(cfg, unet, align_target)
    opt = make_optimizer(cfg, unet, acc.device)
    lr_sched = make_lr_schedule(opt, cfg, acc.num_processes)
    dl = make_dataloader(cfg, cache, pin_memory=acc.device.type == "cuda")
    watch = watched_images(cfg, dl.dataset, encoder) if acc.is_main_process else None  # read once per run
    unet, opt, dl, lr_sched = acc.prepare(unet, opt, dl, lr_sched)
    ckpt = Checkpointer(acc, cfg, {"batch": dataclasses.asdict(plan)})
    phema = PowerEMA(acc.unwrap_model(unet).named_parameters(), cfg.posthoc_ema) \
        if cfg.posthoc_ema and acc.is_main_process else None
    return Run(acc, cfg, plan, unet, opt, lr_sched, loss_fn, dl, make_ema(cfg, acc, unet), ckpt, cache, encoder,
               watch, phema=phema)


# -------------------------------------------------------------------------------------------------- config
def validate(cfg: TrainConfig) -> None:
    """Refuse a config that cannot run, before anything is loaded."""
    if not cfg.data or not cfg.cache:
        raise ValueError("--data and --cache are required (make the cache with `rcdm embed`)")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16 needs a GPU; use bf16 or no on CPU")
    if cfg.resume and cfg.resume != "auto" and cfg.init_from:
        raise ValueError("use either --resume (continue a run exactly) or --init-from (new run from weights); "
                         "--resume auto may go with --init-from (the first run starts from the weights)")
    if cfg.grow_attention and not cfg.init_from:
        raise ValueError("--grow-attention grows a trained model: give it --init-from (a fresh model takes "
                         "--attention-levels)")
    if cfg.report_to in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"--report-to {cfg.report_to} needs the wandb package: pip install wandb (WANDB_MODE=offline "
                         "logs without a network), or use --report-to tensorboard")
    if cfg.sync_every < 1:
        raise ValueError(f"--sync-every {cfg.sync_every}: must be at least 1 (steps between agreements)")
    if cfg.global_batch_size < 0:
        raise ValueError(f"--global-batch-size {cfg.global_batch_size}: must be positive, or 0 for off")
    if cfg.eval_every and not resolve_spec(cfg.eval_data, cfg.data):
        raise ValueError(f"--eval-every needs held-out images, and --eval-data {cfg.eval_data!r} gives none for "
                         f"--data {cfg.data!r}: pass --eval-data SPEC (e.g. file.npz:test or a validation folder)")
    if cfg.posthoc_ema:
        PowerEMA.check(cfg.posthoc_ema)
    if cfg.posthoc_ema_every < 0:
        raise ValueError(f"--posthoc-ema-every {cfg.posthoc_ema_every}: must be positive, or 0 for --checkpoint-every")
    if cfg.eval_every and cfg.eval_images < 2:
        raise ValueError(f"--eval-images {cfg.eval_images}: the rank needs at least 2 held-out images")


def flat_config(cfg) -> dict:
    """The config as tensorboard hparams: scalars only, nested configs as `unet.block_out_channels`."""
    def flat(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", str(v) if isinstance(v, (tuple, list)) else v
    return dict(flat(dataclasses.asdict(cfg)))


def per_layer_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """`--cache a.safetensors,b.safetensors` (one `rcdm embed --layer L` cache per layer of one encoder): one run
    per cache, into output_dir/<layer>, for `rcdm analyze layers`. A single cache trains as before."""
    caches = [c for c in cfg.cache.split(",") if c]
    if len(caches) < 2:
        return [cfg]
    layers = [cache_layer(c).replace("+", "_") for c in caches]
    if len(set(layers)) < len(layers):
        raise ValueError(f"--cache: two caches are for the same layer ({layers}); give one cache per layer")
    return [dataclasses.replace(cfg, cache=c, output_dir=str(Path(cfg.output_dir) / layer))
            for c, layer in zip(caches, layers)]


def cache_layer(path: str) -> str:
    """The encoder layer an `rcdm embed` cache was made from, read from its metadata only."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"embedding cache {path} not found; create it with `rcdm embed`.")
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["rcdm"])["encoder"]["layer"]
