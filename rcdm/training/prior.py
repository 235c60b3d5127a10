"""The representation prior's trainer (`rcdm train-prior`): the denoiser's runtime and loop skeleton, a smaller step.

Batches, timesteps and noise are a pure function of (seed, step, process), as in the denoiser's loop, so a resumed
run continues exactly; the EMA, checkpoints, signals and the loss window are the runtime's."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from ..cache import EmbeddingCache
from ..fsutil import fresh_tmp_dir, replace_dir
from ..hub import resolve_model_path
from ..pipeline import read_meta
from ..prior import PRIOR_DIR, Prior, PriorMLP, prior_loss, prior_scheduler
from ..prior_config import PriorConfig
from ..sampling import seeded_generator
from .runtime import (Cadence, Checkpointer, LossWindow, StopRequest, make_accelerator, make_lr_schedule, run_loop,
                      write_log)


def train_prior(cfg: PriorConfig, command: str = "", install_into_model: bool = True) -> Path:
    """Train with Accelerate (EMA, resumable checkpoints, signals as `rcdm train`); returns output_dir/prior, also
    installed into `cfg.model` if given (`install_into_model=False` leaves that to the caller)."""
    with StopRequest() as request:
        run = PriorRun.prepare(cfg)
        step = run.ckpt.load(cfg.resume, run.ema) if cfg.resume else 0
        run.window = LossWindow(run.acc, step, cfg.output_dir)
        step, _ = run_loop(run.acc, Cadence(cfg.max_steps, cfg.sync_every), request, step, run.step, run.periodic)
    out = Path(cfg.output_dir) / PRIOR_DIR
    if run.acc.is_main_process:
        final = copy.deepcopy(run.acc.unwrap_model(run.model)).float()
        run.ema.copy_to(final.parameters())
        info = {"command": command, "steps": step, "minutes": round((time.time() - run.t0) / 60, 2),
                "final_loss": run.last_loss, "encoder": run.cache.meta["encoder"], "config": dataclasses.asdict(cfg)}
        Prior(final, run.sched).save_pretrained(out, info)
        if cfg.model and install_into_model:
            install(out, cfg.model)
    run.acc.wait_for_everyone()
    return out


def install(prior_dir, model_dir) -> Path:
    """Copy a trained prior into an RCDM pipeline directory, refusing one made for another encoder or layer."""
    path = resolve_model_path(model_dir)
    info = json.loads((Path(prior_dir) / "prior_info.json").read_text())
    want, got = read_meta(path)["encoder"], info.get("encoder", {})
    if (want["layer"], want["dim"]) != (got.get("layer"), got.get("dim")):
        raise ValueError(f"prior made on {got.get('layer')!r} ({got.get('dim')}-d) embeddings cannot go with "
                         f"{path}, which is conditioned on {want['layer']!r} ({want['dim']}-d)")
    tmp = fresh_tmp_dir(path / PRIOR_DIR)
    shutil.rmtree(tmp)
    shutil.copytree(prior_dir, tmp)
    replace_dir(tmp, path / PRIOR_DIR)
    return path / PRIOR_DIR


@dataclass
class PriorRun:
    """The prepared objects of a prior's run, and what the loop does with them at each step."""

    acc: object
    cfg: PriorConfig
    cache: EmbeddingCache
    feats: torch.Tensor    # (N * views, D), memory-mapped: each batch is gathered from the file
    model: PriorMLP
    sched: object          # the DDPM forward process
    opt: torch.optim.Optimizer
    lr_sched: object
    ema: EMAModel          # on every process (cheap for an MLP), so the loop needs no main-process branch
    ckpt: Checkpointer
    window: LossWindow | None = None
    last_loss: float = float("nan")
    t0: float = dataclasses.field(default_factory=time.time)

    @classmethod
    def prepare(cls, cfg: PriorConfig) -> "PriorRun":
        cache = EmbeddingCache.load(cfg.cache)
        acc = make_accelerator(cfg.mixed_precision, cfg.output_dir, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        model = PriorMLP(cache.dim, cfg.width, cfg.num_blocks, cfg.dropout)
        mean, std = cache.embedding_stats()  # stored by `rcdm embed`: no full read of the memory-mapped cache
        model.set_embedding_stats(mean=mean, std=std)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        lr_sched = make_lr_schedule(opt, cfg, acc.num_processes)
        model, opt, lr_sched = acc.prepare(model, opt, lr_sched)
        ema = EMAModel(acc.unwrap_model(model).parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=2 / 3)
        return cls(acc, cfg, cache, cache.embeddings.flatten(0, 1), model, prior_scheduler(), opt, lr_sched, ema,
                   Checkpointer(acc, cfg))

    def step(self, step: int) -> None:
        """One optimizer step on a batch of standardised embeddings; the loss stays on the device."""
        g = seeded_generator(self.cfg.seed, step, self.acc.process_index)  # batch, timesteps and noise: exact resume
        h = self.feats[torch.randint(0, len(self.feats), (self.cfg.batch_size,), generator=g)]
        unwrapped = self.acc.unwrap_model(self.model)
        batch = unwrapped.standardise(h.to(self.acc.device))  # (B, D) z-scores
        with self.acc.autocast():
            loss = prior_loss(self.model, self.sched, batch, g)
        self.acc.backward(loss)
        self.opt.step(), self.lr_sched.step(), self.opt.zero_grad(set_to_none=True)
        self.ema.step(unwrapped.parameters())
        self.window.append(loss)

    def periodic(self, step: int, force: bool) -> None:
        """A log line every `log_every` steps, a checkpoint every `checkpoint_every`; both when `force`d."""
        if step % self.cfg.log_every == 0 or force:
            values = self.window.reduce()
            self.last_loss = sum(values) / len(values)
            write_log(self.acc, self.cfg.output_dir, step, {"loss": self.last_loss})
            self.acc.print(f"step {step}: loss {self.last_loss:.4f} ({(time.time() - self.t0) / 60:.1f} min)",
                           flush=True)
            self.window.clear(step)
        if step % self.cfg.checkpoint_every == 0 or force:
            self.ckpt.save(step, self.ema)
