"""Train an RCDM with Accelerate, on one CPU, one GPU or many:

    rcdm train --preset cifar10-32 --data cifar10_jpeg.npz --cache emb.safetensors --output-dir runs/x
    accelerate launch --multi_gpu -m rcdm.train --preset imagenet-128 --data /imagenet/train --cache ...

Reads frozen embeddings from an `rcdm embed` cache, so the encoder never runs during training. Every
`checkpoint_every` steps the full state (model, optimizer, LR schedule, EMA, step) is written to a temporary
directory and renamed into place, so `--resume latest` continues exactly and a crash never corrupts the last
checkpoint. The final export is a `save_pretrained` pipeline with the EMA weights and a model card.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cache import VIEWS, EmbeddingCache, apply_view
from .config import add_dataclass_args, dataclass_from_args, dataclass_from_dict
from .data import open_dataset
from .images import resize_center_crop, to_pil
from .loss import RCDMLoss
from .model import UNetConfig
from .sampling import DEFAULT_SAMPLING, seeded_generator
from .schedulers import make_scheduler, training_scheduler


@dataclass
class TrainConfig:
    """Everything a training run needs. Presets fill it; a YAML file and flags override fields."""

    data: str = field(default="", metadata={"help": "training images: file.npz[:split], image folder or torchvision:NAME:ROOT"})
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
    batch_size: int = field(default=32, metadata={"help": "images per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
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
    mixed_precision: str = field(default="bf16", metadata={"help": "no, bf16 or fp16 (fp16 needs a GPU)",
                                                           "choices": ["no", "bf16", "fp16"]})
    channels_last: bool = field(default=False, metadata={"help": "channels_last memory format (0.82x on a 2-core "
                                                                 "CPU; unmeasured on GPUs)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers per process"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    checkpoint_every: int = field(default=500, metadata={"help": "save a resumable checkpoint every N steps"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "keep at most this many checkpoints"})
    resume: str = field(default="", metadata={"help": "'latest' or a checkpoint directory to resume exactly"})
    init_from: str = field(default="", metadata={"help": "pipeline directory to start from (new optimizer, re-warmed)"})
    log_every: int = field(default=50, metadata={"help": "log losses every N steps"})
    sample_every: int = field(default=500, metadata={"help": "write a sample grid every N steps (0 = off)"})
    sample_steps: int = field(default=20, metadata={"help": "sampler steps for logged sample grids (the default sampler, DDPM)"})
    export_dtype: str = field(default="float32", metadata={"help": "dtype of exported weights: float32, float16",
                                                           "choices": ["float32", "float16", "bfloat16"]})


PRESETS = {
    # Small and CPU-friendly: v-prediction, min-SNR-5, batch 32, lr 1e-3 with warmup gave a 4x better mean rank
    # than eps / batch 128 / 3e-4 for less CPU time, measured on the 2-core CPU the shipped models were trained on.
    "cifar10-32": TrainConfig(),
    # The reference network exactly (facebookresearch/RCDM MODEL_FLAGS_128, rcdm.adm: 422,603,782 parameters at
    # ssl_dim 2048): 256 base channels, mult (1, 1, 2, 3, 4), attention at 32/16/8 px with 4 heads, ResBlock
    # resampling, eps with a learned variance trained by the hybrid loss, uniform weights; AdamW 1e-4, EMA 0.9999,
    # batch 256 in total. Beyond the reference: condition dropout 0.1 (a learned null h) for guidance.
    "imagenet-128": TrainConfig(
        resolution=128, unet=UNetConfig(arch="adm", block_out_channels=(256, 256, 512, 768, 1024), layers_per_block=2,
                                        attention_levels=(2, 3, 4), num_heads=4, mean_decoder=False,
                                        prediction_type="epsilon", learn_sigma=True),
        snr_gamma=0.0, mean_loss_weight=0.0, batch_size=8, lr=1e-4, warmup_steps=1000, max_steps=600_000,
        ema_power=2 / 3, checkpoint_every=5000, sample_every=5000, num_workers=8, sample_steps=50,
    ),
}


# -------------------------------------------------------------------------------------------------- data
class PairedDataset(torch.utils.data.Dataset):
    """Item j = (image i in view v, f(view_v(x_i))) with i = j // K, v = j % K: every view is its own item,
    so no randomness lives in __getitem__ and resume is exact."""

    def __init__(self, ds, cache: EmbeddingCache, resolution: int):
        self.ds, self.cache, self.resolution = ds, cache, resolution
        self.k = cache.embeddings.shape[1]

    def __len__(self):
        return len(self.cache.indices) * self.k

    def __getitem__(self, j):
        i, v = divmod(j, self.k)
        x, _ = self.ds[int(self.cache.indices[i])]
        x = apply_view(resize_center_crop(x, self.resolution), v)  # uint8 (3, R, R)
        return x.float().div(127.5).sub(1), self.cache.embeddings[i, v].float()  # [-1, 1], (D,)


# -------------------------------------------------------------------------------------------------- objective
def make_loss(cfg: TrainConfig, unet) -> RCDMLoss:
    """The objective for this run; the target is the UNet's own (an --init-from model fixes it)."""
    return RCDMLoss(unet.config.prediction_type, cfg.snr_gamma, cfg.cond_drop_prob, cfg.mean_loss_weight,
                    noise_schedule(cfg, unet))


def noise_schedule(cfg: TrainConfig, unet):
    """The forward process; "learned_range" output for a network that learns its variance (the reference ADM)."""
    learned = getattr(unet.config, "learn_sigma", False)
    return training_scheduler(unet.config.prediction_type, cfg.beta_schedule,
                              variance_type="learned_range" if learned else "fixed_small")


def step_generator(cfg: TrainConfig, step: int, micro: int, rank: int) -> torch.Generator:
    """Noise, timesteps and dropout are a pure function of (seed, step, micro-batch, rank): exact resume needs
    no RNG state, and processes never draw the same noise."""
    return seeded_generator(cfg.seed, step, micro, rank)


# -------------------------------------------------------------------------------------------------- setup
def build_unet(cfg: TrainConfig, dim: int, cache: EmbeddingCache):
    if cfg.init_from:
        from .pipeline import denoiser_class, resolve_model_path

        path = resolve_model_path(cfg.init_from) / "unet"
        unet = denoiser_class(path).from_pretrained(path, torch_dtype=torch.float32)
        if unet.config.embedding_dim != dim:
            raise ValueError(f"--init-from {cfg.init_from} expects {unet.config.embedding_dim}-d embeddings, "
                             f"the cache has {dim}-d ones")
        return unet
    unet = cfg.unet.build(dim, cfg.resolution, null_embedding=cfg.cond_drop_prob > 0)
    unet.set_embedding_stats(cache.embeddings.flatten(0, 1))
    return unet


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    return Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        # A seeded sampler makes the shuffle order a function of (seed, epoch), so resume can skip to the batch.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )


def make_dataloader(cfg: TrainConfig, cache: EmbeddingCache):
    ds = open_dataset(cfg.data)
    cache.check_matches(ds)
    paired = PairedDataset(ds, cache, cfg.resolution)
    if len(paired) < cfg.batch_size:
        raise ValueError(f"{len(paired)} training items is fewer than one batch of {cfg.batch_size}")
    return torch.utils.data.DataLoader(paired, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                       num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)


# -------------------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Resumable checkpoints under output_dir/checkpoints/checkpoint-<step>, written to `.tmp` then renamed."""

    def __init__(self, accelerator, cfg: TrainConfig):
        self.acc, self.cfg = accelerator, cfg
        self.root = Path(cfg.output_dir) / "checkpoints"

    def save(self, step: int, ema) -> Path:
        from safetensors.torch import save_file

        final = self.root / f"checkpoint-{step}"
        tmp = final.with_name(final.name + ".tmp")
        self.acc.save_state(str(tmp))  # every rank writes its own RNG file; the main process writes the rest
        if self.acc.is_main_process:
            save_file({f"{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)},
                      str(tmp / "ema.safetensors"))
            state = {"step": step, "ema_optimization_step": ema.optimization_step, "config": dataclasses.asdict(self.cfg)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            from .fsutil import replace_dir

            replace_dir(tmp, final)
            self._prune()
        self.acc.wait_for_everyone()
        return final

    def _prune(self):
        for old in self.list()[: -self.cfg.checkpoints_total_limit]:
            import shutil

            shutil.rmtree(old)

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first (a `.tmp` left by a crash is ignored)."""
        done = [p for p in self.root.glob("checkpoint-*") if p.suffix != ".tmp" and (p / "trainer_state.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def load(self, which: str, ema) -> int:
        from safetensors.torch import load_file

        path = self._resolve(which)
        state = json.loads((path / "trainer_state.json").read_text())
        _check_resumed_schedule(state.get("config", {}), self.cfg, path)
        self.acc.load_state(str(path))
        shadow = load_file(str(path / "ema.safetensors"))
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[str(i)])
        ema.optimization_step = state["ema_optimization_step"]
        return state["step"]

    def _resolve(self, which: str) -> Path:
        if which != "latest":
            if not (Path(which) / "trainer_state.json").is_file():
                raise FileNotFoundError(f"--resume {which}: not a complete checkpoint directory")
            return Path(which)
        found = self.list()
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {self.root}")
        return found[-1]


def _check_resumed_schedule(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """A decaying LR is fit to --max-steps, and Accelerate restores only the scheduler's step count: resuming under
    another schedule or budget would make the LR jump at the resume point instead of continuing the curve."""
    was = {"lr_schedule": saved.get("lr_schedule", "constant"), "max_steps": saved.get("max_steps", cfg.max_steps)}
    if was["lr_schedule"] == cfg.lr_schedule == "constant":
        return  # a constant LR has no curve to break: extending --max-steps is how a run is lengthened
    changed = [f"--{k.replace('_', '-')} {was[k]} -> {getattr(cfg, k)}" for k in was if was[k] != getattr(cfg, k)]
    if changed:
        raise ValueError(f"--resume {path}: {', '.join(changed)} would change the LR schedule mid-run. Resume with "
                         f"the checkpoint's settings, or start a new stint from its weights with --init-from.")


# -------------------------------------------------------------------------------------------------- loop
def train(cfg: TrainConfig, command: str = "") -> Path:
    """Run the training loop; returns the exported pipeline directory."""
    from accelerate.utils import set_seed
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    _validate(cfg)
    acc = make_accelerator(cfg)
    set_seed(cfg.seed)  # same initial weights on every process and every run
    cache = EmbeddingCache.load(cfg.cache)
    unet = build_unet(cfg, cache.dim, cache)
    if cfg.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    loss_fn = make_loss(cfg, unet)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = make_lr_schedule(opt, cfg, acc.num_processes)
    dl = make_dataloader(cfg, cache)
    unet, opt, dl, lr_sched = acc.prepare(unet, opt, dl, lr_sched)
    ema = EMAModel(acc.unwrap_model(unet).parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
                   power=cfg.ema_power)
    ckpt = Checkpointer(acc, cfg)
    step = ckpt.load(cfg.resume, ema) if cfg.resume else 0
    if acc.is_main_process:
        acc.init_trackers("rcdm", config=_flat_config(cfg))
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", disable=not acc.is_local_main_process)
    losses, t0, stop = [], time.time(), False
    batches = _batches(dl, step * cfg.grad_accum, acc)
    with StopRequest() as request:
        while step < cfg.max_steps and not stop:
            loss = train_step(unet, opt, lr_sched, batches, loss_fn, cfg, acc, step)
            ema.step(acc.unwrap_model(unet).parameters())  # once per optimizer step, i.e. only when grads synced
            step += 1
            losses.append(loss)
            bar.update(1)
            time_up = cfg.max_minutes > 0 and (time.time() - t0) / 60 >= cfg.max_minutes
            stop = any_rank(acc, time_up or request.signal is not None)
            _periodic(acc, cfg, ckpt, ema, unet, cache, step, losses, bar, lr_sched,
                      force_ckpt=stop or step == cfg.max_steps)
    bar.close()
    out = export(acc, cfg, unet, ema, cache, step, command)
    acc.end_training()
    return out


class StopRequest:
    """SIGINT / SIGTERM (Ctrl-C, `kill`, SLURM preemption) stop the loop after the current step with a checkpoint
    and an export, instead of losing everything since the last periodic checkpoint. A second signal aborts at once
    (checkpoints are written to a temporary directory and renamed, so an abort never corrupts one)."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread (e.g. called from a UI worker): keep the default behaviour
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a final checkpoint")
        self.signal = signal.Signals(signum).name
        print(f"\nreceived {self.signal}: finishing this step, then a checkpoint and the export "
              "(send it again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def any_rank(acc, flag: bool) -> bool:
    """True on every process if it is true on any: ranks must agree to stop at the same step, or the next
    collective (gradient all-reduce, checkpoint barrier) would hang. Clocks and signals differ per process."""
    if acc.num_processes == 1:
        return flag
    return acc.gather(torch.tensor([float(flag)], device=acc.device)).max().item() > 0


def make_lr_schedule(opt, cfg: TrainConfig, num_processes: int = 1):
    """Warmup, then constant or decayed to 0 at `max_steps`.

    Steps are counted per process because Accelerate's prepared scheduler steps once per process per optimizer step.
    """
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps * num_processes,
                         num_training_steps=cfg.max_steps * num_processes)


def train_step(unet, opt, lr_sched, batches, loss_fn, cfg, acc, step) -> float:
    """One optimizer step over `grad_accum` micro-batches. Returns the mean loss across processes."""
    total = 0.0
    for micro in range(cfg.grad_accum):
        x0, h = next(batches)
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        with acc.accumulate(unet), acc.autocast():
            loss = loss_fn(unet, x0, h, step_generator(cfg, step, micro, acc.process_index))
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
        total += acc.gather(loss.detach().float().reshape(1)).mean().item() / cfg.grad_accum
    if not math.isfinite(total):
        raise FloatingPointError(
            f"loss became {total} at step {step + 1}; stopping. The last good checkpoint is kept under "
            f"{Path(cfg.output_dir) / 'checkpoints'}. Lower --lr, or use --mixed-precision no to rule out overflow."
        )
    return total


def _batches(dl, skip: int, acc):
    """Endless batches, starting `skip` batches into the seeded epoch order (exact resume)."""
    epoch, skip = divmod(skip, len(dl))
    while True:
        dl.set_epoch(epoch)
        it = acc.skip_first_batches(dl, skip) if skip else dl
        skip = 0
        yield from it
        epoch += 1


def _periodic(acc, cfg, ckpt, ema, unet, cache, step, losses, bar, lr_sched, force_ckpt):
    if step % cfg.log_every == 0 or force_ckpt:
        recent = losses[-cfg.log_every:]
        logs = {"loss": sum(recent) / len(recent), "lr": lr_sched.get_last_lr()[0]}
        acc.log(logs, step=step)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if acc.is_main_process:
            with open(Path(cfg.output_dir) / "losses.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **logs}) + "\n")
    if cfg.sample_every and step % cfg.sample_every == 0:
        log_samples(acc, cfg, ema, unet, cache, step)
    if step % cfg.checkpoint_every == 0 or force_ckpt:
        ckpt.save(step, ema)


# -------------------------------------------------------------------------------------------------- samples/export
def ema_pipeline(acc, cfg, ema, unet, cache):
    """A pipeline holding a copy of the UNet with the EMA weights (the training weights are untouched)."""
    import copy

    from .encoders import load_encoder
    from .pipeline import RCDMPipeline

    model = copy.deepcopy(acc.unwrap_model(unet)).float().to(memory_format=torch.contiguous_format)
    ema.copy_to(model.parameters())
    enc = cache.meta["encoder"]
    encoder = load_encoder(enc["spec"], enc["layer"])
    sched = make_scheduler(DEFAULT_SAMPLING["scheduler"], noise_schedule(cfg, model).config)
    pipe = RCDMPipeline(unet=model.eval(), scheduler=sched, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def log_samples(acc, cfg, ema, unet, cache, step, n_inputs=8, n_samples=5):
    """Grid of (input, samples) rows for the first training items, as PNG and in tensorboard."""
    if acc.is_main_process:
        from .viz import image_grid

        pipe = ema_pipeline(acc, cfg, ema, unet, cache)
        ds = PairedDataset(open_dataset(cfg.data), cache, cfg.resolution)
        items = [ds[j * ds.k] for j in range(min(n_inputs, len(cache.indices)))]
        x = torch.stack([it[0] for it in items])  # (n, 3, R, R) in [-1, 1]
        out = pipe(embeddings=torch.stack([it[1] for it in items]), num_samples=n_samples,
                   num_inference_steps=cfg.sample_steps, generator=torch.Generator().manual_seed(cfg.seed))
        inputs = to_pil((x + 1) / 2)
        grid = image_grid([[inputs[i]] + out.images[i * n_samples:(i + 1) * n_samples] for i in range(len(items))])
        path = Path(cfg.output_dir) / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        import numpy as np

        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    acc.wait_for_everyone()


def export(acc, cfg, unet, ema, cache, step, command: str) -> Path:
    """Save the EMA pipeline to output_dir/pipeline with a model card holding the exact command."""
    out = Path(cfg.output_dir) / "pipeline"
    if acc.is_main_process:
        pipe = ema_pipeline(acc, cfg, ema, unet, cache)
        pipe.encoder.spec = relocate_spec(pipe.encoder.spec, out)
        info = {"command": command, "steps": step, "config": dataclasses.asdict(cfg),
                "cache": {k: cache.meta[k] for k in ("data", "fingerprint", "views", "num_bad")}}
        info["history"] = lineage(init_training_info(cfg), command, step)
        pipe.save_pretrained(out, dtype=getattr(torch, cfg.export_dtype), training=info)
        write_model_card(out, info, cache)
    acc.wait_for_everyone()
    return out


def init_training_info(cfg: TrainConfig) -> dict:
    """The `training` record of the --init-from model ({} for a run from scratch)."""
    if not cfg.init_from:
        return {}
    from .pipeline import read_meta

    return read_meta(cfg.init_from).get("training") or {}


def lineage(prev: dict, command: str, steps: int) -> list[dict]:
    """Every run ({command, steps}) a model descends from via --init-from, oldest first, this one last.

    `steps` alone counts only the last run; stints would otherwise lose the training they continue."""
    if "history" in prev:
        history = list(prev["history"])
    else:  # a model exported before histories were recorded, or none at all
        history = [{"command": prev["command"], "steps": prev["steps"]}] if "steps" in prev else []
    history.append({"command": command, "steps": steps})
    return history


def relocate_spec(spec: str, out_dir: Path) -> str:
    """Rewrite a relative `file:` spec so it resolves from the exported pipeline directory."""
    if not spec.startswith("file:") or os.path.isabs(spec[5:]):
        return spec
    return "file:" + os.path.relpath(Path(spec[5:]).resolve(), out_dir.resolve())


def write_model_card(out: Path, info: dict, cache: EmbeddingCache) -> None:
    enc = cache.meta["encoder"]
    total = sum(h["steps"] for h in info["history"])
    runs = "\n".join(f"# {h['steps']} steps\n{h['command']}" for h in info["history"])
    chain = ", each continuing the previous one's weights (`--init-from`)" if len(info["history"]) > 1 else ""
    text = (f"# RCDM on `{enc['spec']}` ({enc['layer']}, {enc['dim']}-d)\n\n"
            f"Trained for {total} optimizer steps in {len(info['history'])} run(s) on "
            f"`{cache.meta['data']}` ({len(cache.indices)} images x {len(VIEWS)} views){chain}:\n\n```\n{runs}\n```\n\n"
            f"Full config: `rcdm_pipeline.json` -> `training`.\n")
    (out / "README.md").write_text(text)


# -------------------------------------------------------------------------------------------------- config/CLI
def _validate(cfg: TrainConfig):
    if not cfg.data or not cfg.cache:
        raise ValueError("--data and --cache are required (make the cache with `rcdm embed`)")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16 needs a GPU; use bf16 or no on CPU")
    if cfg.resume and cfg.init_from:
        raise ValueError("use either --resume (continue a run exactly) or --init-from (new run from weights)")


def _flat_config(cfg) -> dict:
    """The config as tensorboard hparams: scalars only, nested configs as `unet.block_out_channels`."""
    def flat(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", str(v) if isinstance(v, (tuple, list)) else v
    return dict(flat(dataclasses.asdict(cfg)))


def load_config(preset: str | None, yaml_path: str | None, args) -> TrainConfig:
    """preset < YAML file < flags."""
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset or "cifar10-32"]
    if yaml_path:
        import yaml

        cfg = dataclass_from_dict(TrainConfig, yaml.safe_load(Path(yaml_path).read_text()) or {}, cfg, yaml_path)
    return dataclass_from_args(TrainConfig, args, base=cfg)


def _configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="named preset (default: cifar10-32)")
    p.add_argument("--config", default=None, help="YAML file with TrainConfig fields (overrides the preset)")
    add_dataclass_args(p, TrainConfig, defaults_from_none=True)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an RCDM on cached embeddings (Accelerate)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure_parser(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args, command: str | None = None) -> None:
    cfg = load_config(args.preset, args.config, args)
    for run_cfg in per_layer_configs(cfg):
        out = train(run_cfg, command or shlex.join(["rcdm"] + sys.argv[1:]))
        print(f"exported pipeline to {out}")


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
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"embedding cache {path} not found; create it with `rcdm embed`.")
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["rcdm"])["encoder"]["layer"]


def main(argv=None) -> int:
    """Entry point for `accelerate launch -m rcdm.train ...`."""
    p = argparse.ArgumentParser(prog="rcdm.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure_parser(p)
    argv = sys.argv[1:] if argv is None else argv
    try:
        cmd_train(p.parse_args(argv), shlex.join(["accelerate", "launch", "-m", "rcdm.train"] + argv))
    except (ValueError, FileNotFoundError, ArithmeticError) as e:
        print(f"rcdm train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
