"""Train an RCDM with Accelerate, on one CPU, one GPU or many:

    rcdm train --preset cifar10-32 --data cifar10_jpeg.npz --cache emb.safetensors --output-dir runs/x
    accelerate launch --multi_gpu -m rcdm.train --preset imagenet-128 --data /imagenet/train --cache ...

Reads frozen embeddings from an `rcdm embed` cache, so the encoder never runs during training. Every
`checkpoint_every` steps the full state (model, optimizer, LR schedule, EMA, step) is written to a temporary
directory and renamed into place, so `--resume latest` continues exactly and a crash never corrupts the last
checkpoint. The final export is a `save_pretrained` pipeline with the EMA weights and a model card.

Preemption (SLURM and the like): `--resume auto` continues from the latest checkpoint if there is one and starts
fresh otherwise, so one command serves the first run and every requeue. SIGUSR1 writes a checkpoint at once and
training continues; SIGTERM writes one and exits without the export; SIGINT (Ctrl-C) writes one and exports.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .align import SpatialTarget
from .cache import VIEWS, EmbeddingCache, apply_view
from .images import resize_center_crop, to_pil
from .loss import RCDMLoss
from .model import RCDMUNet, build_denoiser
from .heldout import HeldOut, resolve_spec
from .sampling import DEFAULT_SAMPLING, seeded_generator
from .schedulers import make_scheduler, training_scheduler
from .train_config import PRESETS, TrainConfig  # noqa: F401 (torch-free, for the flags; re-exported here)


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
def make_loss(cfg: TrainConfig, unet, align_target=None) -> RCDMLoss:
    """The objective for this run; the target is the UNet's own (an --init-from model fixes it)."""
    return RCDMLoss(unet.config.prediction_type, cfg.snr_gamma, cfg.cond_drop_prob, cfg.mean_loss_weight,
                    noise_schedule(cfg, unet), align_target=align_target, align_weight=cfg.repa_weight)


def noise_schedule(cfg: TrainConfig, unet):
    """The forward process; "learned_range" output for a network that learns its variance (the reference ADM)."""
    learned = getattr(unet.config, "learn_sigma", False)
    return training_scheduler(unet.config.prediction_type, cfg.beta_schedule,
                              variance_type="learned_range" if learned else "fixed_small")


def step_generator(cfg: TrainConfig, step: int, micro: int, rank: int,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """Noise, timesteps and dropout are a pure function of (seed, step, micro-batch, rank): exact resume needs
    no RNG state, and processes never draw the same noise. The generator lives on the training device, so the draws
    happen there (a CUDA stream is not a CPU stream: the same key gives other, equally valid noise on a GPU)."""
    return seeded_generator(cfg.seed, step, micro, rank, device=device)


# -------------------------------------------------------------------------------------------------- batch
@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's images are split: global batch = processes x per-device batch x accumulation."""

    num_processes: int
    per_device: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.num_processes * self.per_device * self.grad_accum

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.num_processes} process(es) x {self.per_device} per device "
                f"x {self.grad_accum} accumulation step(s)")


def plan_batch(global_batch: int, num_processes: int, max_per_device: int) -> BatchPlan:
    """The fewest accumulation steps whose per-device micro-batch is at most `max_per_device` and splits the global
    batch exactly: DDP averages gradients over equal micro-batches, so every process must see the same count."""
    if global_batch < 1 or max_per_device < 1:
        raise ValueError(f"--global-batch-size ({global_batch}) and --batch-size ({max_per_device}) must be positive")
    if global_batch % num_processes:
        raise ValueError(f"--global-batch-size {global_batch} does not split over {num_processes} processes; use a "
                         f"multiple of {num_processes}, or another number of processes")
    per_process = global_batch // num_processes
    accum = next(a for a in range(math.ceil(per_process / max_per_device), per_process + 1) if per_process % a == 0)
    return BatchPlan(num_processes, per_process // accum, accum)


def apply_global_batch(cfg: TrainConfig, num_processes: int) -> tuple[TrainConfig, BatchPlan]:
    """The config with --batch-size / --grad-accum derived from --global-batch-size (unchanged when it is 0)."""
    if not cfg.global_batch_size:
        return cfg, BatchPlan(num_processes, cfg.batch_size, cfg.grad_accum)
    if cfg.grad_accum != 1:
        raise ValueError(f"--grad-accum {cfg.grad_accum} and --global-batch-size {cfg.global_batch_size} both set the "
                         "accumulation; leave --grad-accum at 1 (it is derived), or set --global-batch-size 0")
    plan = plan_batch(cfg.global_batch_size, num_processes, cfg.batch_size)
    return dataclasses.replace(cfg, batch_size=plan.per_device, grad_accum=plan.grad_accum), plan


# -------------------------------------------------------------------------------------------------- setup
def build_unet(cfg: TrainConfig, dim: int, cache: EmbeddingCache, align_dim: int = 0):
    """A fresh denoiser, or the --init-from one; `align_dim` > 0 gives it a REPA projector (kept if it has one)."""
    if cfg.init_from:
        from .pipeline import denoiser_class, resolve_model_path

        path = resolve_model_path(cfg.init_from) / "unet"
        unet = denoiser_class(path).from_pretrained(path, torch_dtype=torch.float32)
        if unet.config.embedding_dim != dim:
            raise ValueError(f"--init-from {cfg.init_from} expects {unet.config.embedding_dim}-d embeddings, "
                             f"the cache has {dim}-d ones")
        if cfg.cond_drop_prob > 0 and getattr(unet, "null_embedding", None) is None:
            raise ValueError(f"--init-from {cfg.init_from} has no learned null embedding (a converted RCDM "
                             "checkpoint), so it cannot learn to drop the condition: add --cond-drop-prob 0")
        if cfg.grow_attention:
            if not isinstance(unet, RCDMUNet):
                raise ValueError(f"--grow-attention needs an RCDMUNet; {cfg.init_from} is a {type(unet).__name__}")
            unet = unet.with_attention(cfg.grow_attention)
        if align_dim and getattr(unet.config, "align_dim", 0) != align_dim:
            if not isinstance(unet, RCDMUNet):
                raise ValueError(f"--repa-weight needs an RCDMUNet; {cfg.init_from} is a {type(unet).__name__}")
            unet = unet.with_align_head(align_dim)
        return unet
    unet = build_denoiser(cfg.unet, dim, cfg.resolution, null_embedding=cfg.cond_drop_prob > 0, align_dim=align_dim)
    mean, std = cache.embedding_stats()  # stored by `rcdm embed`: no full read of the memory-mapped cache
    unet.set_embedding_stats(mean=mean, std=std)
    return unet


def make_optimizer(cfg: TrainConfig, unet, device: torch.device):
    """AdamW; the fused CUDA kernel on GPUs (one launch for all parameters instead of several per tensor)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on Ampere and later: the fp32 parts of a bf16 run (the loss, the optimizer)
    lose nothing a diffusion loss can see."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_ema(cfg: TrainConfig, acc, unet):
    """diffusers' EMA, on the main process only (only it samples, saves and exports), updated with foreach ops."""
    from diffusers.training_utils import EMAModel

    if not acc.is_main_process:
        return None
    return EMAModel(acc.unwrap_model(unet).parameters(), decay=cfg.ema_decay, use_ema_warmup=True,
                    power=cfg.ema_power, foreach=True)


def make_accelerator(cfg, find_unused_parameters: bool = False):
    """The Accelerator of a run. `find_unused_parameters` lets DDP finish a step in which a parameter took no part."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
    from accelerate.utils import DistributedDataParallelKwargs as DDPKwargs

    report_to = getattr(cfg, "report_to", "tensorboard")
    return Accelerator(
        kwargs_handlers=[DDPKwargs(find_unused_parameters=find_unused_parameters)],
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
        log_with=["tensorboard", "wandb"] if report_to == "all" else [report_to],
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        # A seeded sampler makes the shuffle order a function of (seed, epoch), so resume can skip to the batch.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed,
                                                  non_blocking=torch.cuda.is_available()),  # with pinned memory
    )


def make_dataloader(cfg: TrainConfig, cache: EmbeddingCache, pin_memory: bool = False):
    ds = cache.open_data(cfg.data)
    cache.check_matches(ds)
    paired = PairedDataset(ds, cache, cfg.resolution)
    if len(paired) < cfg.batch_size:
        raise ValueError(f"{len(paired)} training items is fewer than one batch of {cfg.batch_size}")
    return torch.utils.data.DataLoader(paired, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                       num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                                       pin_memory=pin_memory)


def load_cache_encoder(cache: EmbeddingCache):
    """The encoder that made the cache, refused if its weights are not the ones it was made with (every rank checks,
    so all of them stop with the same error). The sample grids and the export reuse it."""
    from .encoders import load_encoder
    from .encoders.frozen import Preprocess

    enc = cache.meta["encoder"]
    encoder = load_encoder(enc["spec"], enc["layer"])
    cache.check_encoder(encoder)
    if cache.meta.get("matched_view"):  # encode images as the cache did: grids, held-out scores, the export
        encoder.preprocess = Preprocess.from_dict(cache.meta["encoder"]["preprocess"])
    return encoder


# -------------------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Resumable checkpoints under output_dir/checkpoints/checkpoint-<step>, written to `.tmp` then renamed.

    `trainer_state.json` records the step, the config, the number of processes and `extra` (the batch plan): a run
    resumed on another number of processes would see other data in another order, so it is refused."""

    def __init__(self, accelerator, cfg, extra: dict | None = None):
        self.acc, self.cfg, self.extra = accelerator, cfg, extra or {}
        self.root = Path(cfg.output_dir) / "checkpoints"

    def save(self, step: int, ema) -> Path:
        from safetensors.torch import save_file

        final = self.root / f"checkpoint-{step}"
        tmp = final.with_name(final.name + ".tmp")
        self.acc.save_state(str(tmp))  # every rank writes its own RNG file; the main process writes the rest
        if self.acc.is_main_process:
            save_file({f"{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)},
                      str(tmp / "ema.safetensors"))
            state = {"step": step, "ema_optimization_step": ema.optimization_step,
                     "config": dataclasses.asdict(self.cfg), "num_processes": self.acc.num_processes, **self.extra}
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
        """Restore a checkpoint and return its step; 0 (nothing restored) for 'auto' without a checkpoint. `ema` is
        None on processes that keep no EMA."""
        from safetensors.torch import load_file

        path = self._resolve(which)
        if path is None:
            self.acc.print(f"--resume auto: no checkpoint under {self.root} yet; starting from step 0")
            return 0
        state = json.loads((path / "trainer_state.json").read_text())
        _check_resumed_schedule(state.get("config", {}), self.cfg, path)
        _check_resumed_layout(state, path, self.acc.num_processes, self.extra)
        self.acc.load_state(str(path))
        if ema is not None:
            shadow = load_file(str(path / "ema.safetensors"))
            for i, p in enumerate(ema.shadow_params):
                p.data.copy_(shadow[str(i)])
            ema.optimization_step = state["ema_optimization_step"]
        self.acc.print(f"resumed from {path} at step {state['step']}")
        return state["step"]

    def _resolve(self, which: str) -> Path | None:
        if which not in ("latest", "auto"):
            if not (Path(which) / "trainer_state.json").is_file():
                raise FileNotFoundError(f"--resume {which}: not a complete checkpoint directory; give one, or "
                                        "'latest' or 'auto'")
            return Path(which)
        found = self.list()
        if not found and which == "latest":
            raise FileNotFoundError(f"--resume latest: no checkpoint under {self.root}; use --resume auto to start "
                                    "fresh when there is none")
        return found[-1] if found else None


def _check_resumed_layout(state: dict, path: Path, num_processes: int, extra: dict) -> None:
    """Refuse to resume on another number of processes, or with another batch plan: the per-process data order, the
    batches already consumed and the LR schedule's step count all depend on them. Checkpoints written before the
    count was recorded hold one RNG file per process."""
    saved = state.get("num_processes") or len(list(path.glob("random_states_*.pkl"))) or num_processes
    if saved != num_processes:
        raise ValueError(f"--resume {path}: the checkpoint was written by {saved} processes and this run has "
                         f"{num_processes}; the data order and the LR schedule would not continue. Resume on "
                         f"{saved} processes, or start a new stint from an exported pipeline with --init-from.")
    if "batch" in state and "batch" in extra and state["batch"] != extra["batch"]:
        raise ValueError(f"--resume {path}: the checkpoint's batch ({state['batch']}) differs from this run's "
                         f"({extra['batch']}); resume with its --global-batch-size / --batch-size / --grad-accum, or "
                         "start a new stint with --init-from.")


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
def train(cfg: TrainConfig, command: str = "") -> Path | None:
    """Run the training loop; returns the exported pipeline directory, or None for a preempted run (SIGTERM: it
    stops with a checkpoint and skips the export, for `--resume auto` to continue)."""
    _validate(cfg)
    # Signals are caught from the start: one that arrives during the setup (a preemption while the data loads) is
    # acted on after the first step, and SIGUSR1 never kills the run (its default action would).
    with StopRequest(preemption_skips_export=True) as request:
        return _train(cfg, command, request)


def _train(cfg: TrainConfig, command: str, request: StopRequest) -> Path | None:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    acc = make_accelerator(cfg)
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
    ema = make_ema(cfg, acc, unet)
    ckpt = Checkpointer(acc, cfg, {"batch": dataclasses.asdict(plan)})
    step = ckpt.load(cfg.resume, ema) if cfg.resume else 0
    if acc.is_main_process:
        acc.init_trackers("rcdm", config=_flat_config(cfg), init_kwargs={"wandb": {"dir": str(Path(cfg.output_dir))}})
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", disable=not acc.is_local_main_process)
    window, t0, preempted = LossWindow(acc, step, cfg.output_dir), time.time(), False
    batches = _batches(dl, step * cfg.grad_accum, acc)
    while step < cfg.max_steps:
        window.append(*train_step(unet, opt, lr_sched, batches, loss_fn, cfg, acc, step))
        if ema is not None:
            ema.step(acc.unwrap_model(unet).parameters())  # once per optimizer step, i.e. only when grads synced
        step += 1
        bar.update(1)
        stop, preempted, checkpoint_now = _requests(acc, cfg, request, step, t0)
        _periodic(acc, cfg, ckpt, ema, unet, cache, encoder, watch, step, window, bar, lr_sched,
                  force_ckpt=stop or checkpoint_now or step == cfg.max_steps)
        if stop:
            break
    bar.close()
    if preempted:
        acc.print(f"preempted at step {step}: checkpoint written, export skipped; run the same command with "
                  "--resume auto to continue")
        acc.end_training()
        return None
    out = export(acc, cfg, unet, ema, cache, step, command, encoder)
    acc.end_training()
    return out


class StopRequest:
    """Signals, acted on between steps. SIGINT (Ctrl-C) and SIGTERM (`kill`, SLURM preemption) stop the loop after
    the current step with a checkpoint; SIGUSR1 (SLURM `--signal=USR1@120`, before a time limit) asks for a
    checkpoint and training goes on. A second Ctrl-C aborts at once (checkpoints are written to a temporary directory
    and renamed, so an abort never corrupts one); a repeated SIGTERM is ignored, as a launcher and SLURM may each
    send one. With `preemption_skips_export`, a SIGTERM run skips the export (a requeued run will continue it)."""

    def __init__(self, preemption_skips_export: bool = False):
        self.signal: str | None = None
        self.checkpoint_requested = False
        self.preemption_skips_export = preemption_skips_export
        self._previous: dict = {}

    def __enter__(self):
        wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in wanted}
        except ValueError:  # not the main thread (e.g. called from a UI worker): keep the default behaviour
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if name == "SIGUSR1":
            self.checkpoint_requested = True
            print("\nreceived SIGUSR1: writing a checkpoint after this step (on several processes, at the next "
                  "--sync-every step); training continues", file=sys.stderr, flush=True)
            return
        if self.signal is not None:
            if name == "SIGINT":
                raise KeyboardInterrupt("second SIGINT: aborting without a final checkpoint")
            return
        self.signal = name
        then = ("a checkpoint, no export (continue with --resume auto)"
                if name == "SIGTERM" and self.preemption_skips_export else "a checkpoint and the export")
        print(f"\nreceived {name}: finishing this step, then {then} (Ctrl-C again to abort)", file=sys.stderr,
              flush=True)

    def take_checkpoint_request(self) -> bool:
        """Whether SIGUSR1 arrived since the last call."""
        requested, self.checkpoint_requested = self.checkpoint_requested, False
        return requested

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def agree(acc, *flags: bool) -> tuple[bool, ...]:
    """Each flag true on every process if it is true on any, in one collective: ranks must stop and checkpoint at
    the same step, or the next collective (gradient all-reduce, checkpoint barrier) would hang. Clocks and signals
    differ per process."""
    if acc.num_processes == 1:
        return tuple(bool(f) for f in flags)
    got = acc.gather(torch.tensor([[float(f) for f in flags]], device=acc.device))  # (P, n)
    return tuple(bool(v) for v in got.amax(0).tolist())


def any_rank(acc, flag: bool) -> bool:
    """True on every process if it is true on any."""
    return agree(acc, flag)[0]


def _requests(acc, cfg: TrainConfig, request: StopRequest, step: int, t0: float) -> tuple[bool, bool, bool]:
    """(stop, preempted, checkpoint now), the same on every process. Several processes agree every `sync_every`
    steps only: each agreement is a collective that waits for the whole step. The last step needs none."""
    if step >= cfg.max_steps or (acc.num_processes > 1 and step % cfg.sync_every):
        return False, False, False
    time_up = cfg.max_minutes > 0 and (time.time() - t0) / 60 >= cfg.max_minutes
    return agree(acc, time_up or request.signal is not None, request.signal == "SIGTERM",
                 request.take_checkpoint_request())


def make_lr_schedule(opt, cfg: TrainConfig, num_processes: int = 1):
    """Warmup, then constant or decayed to 0 at `max_steps`, counted in optimizer steps of the global batch.

    The counts are scaled by the process count because Accelerate's prepared scheduler steps once per process per
    optimizer step (and not at all on accumulation micro-batches). A checkpoint's schedule is therefore tied to its
    process count, which is why resuming on another one is refused."""
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps * num_processes,
                         num_training_steps=cfg.max_steps * num_processes)


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


class LossWindow:
    """Per-step losses and gradient norms since the last log line, left on the device. They are reduced across
    processes and checked for NaN only at log, sample and checkpoint steps, so no other step waits for the device
    or the other ranks. A clock gives img/s over the window, without the time spent on grids and checkpoints."""

    def __init__(self, acc, step: int, output_dir: str):
        self.acc, self.output_dir = acc, output_dir
        self.clear(step)

    def append(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        self.losses.append(loss)
        if grad_norm is not None:
            self.norms.append(grad_norm.detach().float())

    def reduce(self) -> list[float]:
        """The mean over processes of each pending step's loss; FloatingPointError naming the first bad step."""
        local = torch.stack(self.losses)[None]  # (1, n)
        values = (self.acc.gather(local).mean(0) if self.acc.num_processes > 1 else local[0]).tolist()  # (n,)
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise FloatingPointError(
                f"loss became {values[bad]} at step {self.first + bad}; stopping. The last good checkpoint is kept "
                f"under {Path(self.output_dir) / 'checkpoints'}. Lower --lr, or use --mixed-precision no to rule out "
                "overflow.")
        return values

    def log_line(self, values: list[float], images_per_step: int) -> dict:
        """The window's mean loss, mean gradient norm (identical on every rank after the all-reduce) and img/s."""
        logs = {"loss": sum(values) / len(values)}
        if self.norms:
            logs["grad_norm"] = torch.stack(self.norms).mean().item()
        logs["img_per_s"] = len(values) * images_per_step / max(time.perf_counter() - self.t0, 1e-9)
        return logs

    def pause(self, seconds: float) -> None:
        """Leave `seconds` (a sample grid, a checkpoint) out of the img/s clock."""
        self.t0 += seconds

    def clear(self, step: int) -> None:
        self.first, self.losses, self.norms, self.t0 = step + 1, [], [], time.perf_counter()


def _batches(dl, skip: int, acc):
    """Endless batches, starting `skip` batches into the seeded epoch order (exact resume)."""
    epoch, skip = divmod(skip, len(dl))
    while True:
        dl.set_epoch(epoch)
        it = acc.skip_first_batches(dl, skip) if skip else dl
        skip = 0
        yield from it
        epoch += 1


def _periodic(acc, cfg, ckpt, ema, unet, cache, encoder, watch, step, window, bar, lr_sched, force_ckpt):
    log_now = step % cfg.log_every == 0 or force_ckpt
    sample_now = bool(cfg.sample_every) and step % cfg.sample_every == 0
    eval_now = bool(cfg.eval_every) and step % cfg.eval_every == 0
    ckpt_now = step % cfg.checkpoint_every == 0 or force_ckpt
    if not (log_now or sample_now or eval_now or ckpt_now):
        return
    values = window.reduce()  # a NaN stops the run before anything is sampled or saved
    if log_now:
        logs = {**window.log_line(values, acc.num_processes * cfg.batch_size * cfg.grad_accum),
                "lr": lr_sched.get_last_lr()[0]}
        if acc.device.type == "cuda":
            logs["peak_mem_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
        acc.log(logs, step=step)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if acc.is_main_process:
            with open(Path(cfg.output_dir) / "losses.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **logs}) + "\n")
        window.clear(step)
    t = time.perf_counter()
    if sample_now:
        log_samples(acc, cfg, ema, unet, cache, step, encoder, watch)
    if eval_now:
        log_heldout_score(acc, cfg, ema, unet, cache, step, encoder, watch, bar)
    if ckpt_now:
        ckpt.save(step, ema)
    window.pause(time.perf_counter() - t)


# -------------------------------------------------------------------------------------------------- samples/export
def ema_pipeline(acc, cfg, ema, unet, cache, encoder=None):
    """A pipeline holding a copy of the UNet with the EMA weights (the training weights are untouched)."""
    import copy

    from .pipeline import RCDMPipeline

    model = copy.deepcopy(acc.unwrap_model(unet)).float().to(memory_format=torch.contiguous_format)
    model._compiled_call_impl = None  # --compile: sample eagerly, sampling shapes would only trigger recompiles
    ema.copy_to(model.parameters())
    encoder = load_cache_encoder(cache) if encoder is None else encoder
    sched = make_scheduler(DEFAULT_SAMPLING["scheduler"], noise_schedule(cfg, model).config)
    pipe = RCDMPipeline(unet=model.eval(), scheduler=sched, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def grid_rows(labels: torch.Tensor, n: int) -> list[int]:
    """Cache rows a sample grid shows: the first item of each class in cache order, then the items after the
    first, n in all (a sorted ImageFolder would otherwise give n images of its first class)."""
    seen, firsts = set(), []
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            firsts.append(i)
            if len(firsts) == n:
                return firsts
    chosen = set(firsts)
    return firsts + [i for i in range(len(labels)) if i not in chosen][: n - len(firsts)]


def grid_inputs(paired: PairedDataset, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, h) pairs of training items for the sample grids when there are no held-out images: x (n, 3, R, R) in
    [-1, 1], h (n, D)."""
    items = [paired[i * paired.k] for i in grid_rows(paired.cache.labels, min(n, len(paired.cache.indices)))]
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def watched_images(cfg: TrainConfig, paired: PairedDataset, encoder) -> HeldOut | None:
    """What the grids and --eval-every look at, read once: held-out images (embedded by the run's encoder) when
    there are some, else the grid's training items; None if the run neither samples nor scores."""
    if not (cfg.sample_every or cfg.eval_every):
        return None
    spec = resolve_spec(cfg.eval_data, cfg.data)
    if spec:
        return HeldOut.read(spec, cfg.eval_images if cfg.eval_every else 8, encoder, cfg.resolution)
    x, h = grid_inputs(paired)
    return HeldOut(x, h, torch.full((len(h),), -1), torch.arange(len(h)), spec="")


def log_heldout_score(acc, cfg, ema, unet, cache, step, encoder, watch: HeldOut, bar) -> None:
    """Held-out mean rank and top-1 of the EMA weights (main process; the others wait), to the trackers and to
    output_dir/heldout.jsonl."""
    if acc.is_main_process:
        scores = watch.score(ema_pipeline(acc, cfg, ema, unet, cache, encoder), cfg.sample_steps, cfg.seed)
        acc.log(scores, step=step)
        bar.write(f"step {step}: held-out mean rank {scores['heldout_mean_rank']:.2f} "
                  f"(chance {(len(watch.h) + 1) / 2:g}), top-1 {scores['heldout_top1_pct']:.1f}%")
        with open(Path(cfg.output_dir) / "heldout.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "num_images": len(watch.h), **scores}) + "\n")
    acc.wait_for_everyone()


def log_samples(acc, cfg, ema, unet, cache, step, encoder, watch: HeldOut, n_inputs=8, n_samples=5):
    """Grid of (input, samples) rows for the watched images (read once per run), as PNG and in tensorboard."""
    if acc.is_main_process:
        from .viz import image_grid

        pipe = ema_pipeline(acc, cfg, ema, unet, cache, encoder)
        x, h = watch.grid(n_inputs)
        out = pipe(embeddings=h, num_samples=n_samples,
                   num_inference_steps=cfg.sample_steps, generator=torch.Generator().manual_seed(cfg.seed))
        inputs = to_pil((x + 1) / 2)
        sheet = image_grid([[inputs[i]] + out.images[i * n_samples:(i + 1) * n_samples] for i in range(len(x))])
        path = Path(cfg.output_dir) / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
        import numpy as np

        for tracker in acc.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples", np.asarray(sheet), step, dataformats="HWC")
            elif tracker.name == "wandb":
                tracker.log_images({"samples": [sheet]}, step=step)
    acc.wait_for_everyone()


def export(acc, cfg, unet, ema, cache, step, command: str, encoder=None) -> Path:
    """Save the EMA pipeline to output_dir/pipeline with a model card holding the exact command."""
    out = Path(cfg.output_dir) / "pipeline"
    if acc.is_main_process:
        pipe = ema_pipeline(acc, cfg, ema, unet, cache, encoder)
        info = {"command": command, "steps": step, "config": dataclasses.asdict(cfg),
                "batch": {"num_processes": acc.num_processes, "per_device": cfg.batch_size,
                          "grad_accum": cfg.grad_accum, "global": acc.num_processes * cfg.batch_size * cfg.grad_accum},
                "cache": {k: cache.meta[k] for k in ("data", "fingerprint", "views", "num_bad")}}
        info["history"] = lineage(init_training_info(cfg), command, step)
        pipe.save_pretrained(out, dtype=getattr(torch, cfg.export_dtype), training=info)  # re-aims a relative spec
        write_model_card(out, info, cache)
    acc.wait_for_everyone()
    return out


def init_training_info(cfg: TrainConfig) -> dict:
    """The `training` record of the --init-from model ({} for a run from scratch)."""
    if not cfg.init_from:
        return {}
    from .pipeline import read_meta

    return read_meta(cfg.init_from).get("training") or {}


def runs_behind(training: dict) -> list[dict]:
    """The runs ({command, steps}) behind a model's weights, oldest first, from its `training` record."""
    if "history" in training:
        return list(training["history"])
    # a model exported before histories were recorded, or none at all
    return [{"command": training["command"], "steps": training["steps"]}] if "steps" in training else []


def lineage(prev: dict, command: str, steps: int) -> list[dict]:
    """Every run ({command, steps}) a model descends from via --init-from, oldest first, this one last.

    `steps` alone counts only the last run; stints would otherwise lose the training they continue."""
    return runs_behind(prev) + [{"command": command, "steps": steps}]


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
    if cfg.eval_every and cfg.eval_images < 2:
        raise ValueError(f"--eval-images {cfg.eval_images}: the rank needs at least 2 held-out images")


def _flat_config(cfg) -> dict:
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
    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"embedding cache {path} not found; create it with `rcdm embed`.")
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["rcdm"])["encoder"]["layer"]


if __name__ == "__main__":  # `accelerate launch -m rcdm.train ...`: the command line is rcdm.cli.train
    from rcdm.cli.train import main

    sys.exit(main())
