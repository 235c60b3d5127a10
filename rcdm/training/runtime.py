"""What every trainer here shares (EDM2's `torch_utils/distributed.py`): the Accelerator, crash-safe checkpoints,
signals and the cross-process trigger, the LR schedule, the loss window, and `run_loop`, the loop skeleton.

A trainer supplies `train_step(step)` (one optimizer step; returns device scalars, never reads them) and
`periodic(step, force)` (its logging, grids and checkpoints); `run_loop` decides, the same way on every process,
when to stop and when a checkpoint is due.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from accelerate.utils import DistributedDataParallelKwargs as DDPKwargs
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file

from ..fsutil import replace_dir


# -------------------------------------------------------------------------------------------------- setup
def make_accelerator(mixed_precision: str, output_dir: str | None = None, grad_accum: int = 1, seed: int = 0,
                     report_to: str | None = None, find_unused_parameters: bool = False) -> Accelerator:
    """The Accelerator of a run. `report_to` (tensorboard, wandb, all) sets up trackers under output_dir/logs;
    `find_unused_parameters` lets DDP finish a step in which a parameter took no part."""
    trackers = {None: None, "all": ["tensorboard", "wandb"]}.get(report_to, [report_to])
    project = ProjectConfiguration(project_dir=output_dir, logging_dir=str(Path(output_dir) / "logs")) \
        if output_dir else None
    return Accelerator(
        kwargs_handlers=[DDPKwargs(find_unused_parameters=find_unused_parameters)],
        mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum, log_with=trackers,
        project_config=project,
        # A seeded sampler makes the shuffle order a function of (seed, epoch), so resume can skip to the batch.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed,
                                                  non_blocking=torch.cuda.is_available()),  # with pinned memory
    )


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on Ampere and later: the fp32 parts of a bf16 run (the loss, the optimizer)
    lose nothing a diffusion loss can see."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_lr_schedule(opt, cfg, num_processes: int = 1):
    """Warmup, then constant or decayed to 0 at `max_steps`, counted in optimizer steps of the global batch.

    The counts are scaled by the process count because Accelerate's prepared scheduler steps once per process per
    optimizer step (and not at all on accumulation micro-batches). A checkpoint's schedule is therefore tied to its
    process count, which is why resuming on another one is refused."""
    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps * num_processes,
                         num_training_steps=cfg.max_steps * num_processes)


# -------------------------------------------------------------------------------------------------- signals
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
        self.previous: dict = {}

    def __enter__(self):
        wanted = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
        try:
            self.previous = {s: signal.signal(s, self.handle) for s in wanted}
        except ValueError:  # not the main thread (e.g. called from a UI worker): keep the default behaviour
            self.previous = {}
        return self

    def handle(self, signum, frame):
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
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def any_process(acc, flag: bool) -> bool:
    """True on every process if `flag` is true on any: Accelerate's trigger, one all-reduce. Ranks must stop and
    checkpoint at the same step, or the next collective would hang; clocks and signals differ per process. One
    process needs no collective, and so never waits for the device."""
    if acc.num_processes == 1:
        return flag
    if flag:
        acc.set_trigger()
    return acc.check_trigger()


@dataclass(frozen=True)
class Cadence:
    """When a loop stops and when it stops to agree, in optimizer steps."""

    max_steps: int             # train up to this step
    sync_every: int = 1        # steps between agreements of several processes (each waits for the whole step)
    max_minutes: float = 0.0   # also stop after this wall time (0 = off)


def agree_requests(acc, cadence: Cadence, request: StopRequest, step: int, t0: float) -> tuple[bool, bool, bool]:
    """(stop, preempted, checkpoint now), the same on every process. Several processes agree every `sync_every`
    steps only; the last step needs no agreement. A stop always checkpoints, so a SIGUSR1 matters only without one:
    two one-bit triggers per agreement, whichever way it goes."""
    if step >= cadence.max_steps or (acc.num_processes > 1 and step % cadence.sync_every):
        return False, False, False
    time_up = cadence.max_minutes > 0 and (time.time() - t0) / 60 >= cadence.max_minutes
    if any_process(acc, time_up or request.signal is not None):
        return True, any_process(acc, request.signal == "SIGTERM"), True
    return False, False, any_process(acc, request.take_checkpoint_request())


def run_loop(acc, cadence: Cadence, request: StopRequest, step: int, train_step: Callable[[int], None],
             periodic: Callable[[int, bool], None]) -> tuple[int, bool]:
    """The loop of every trainer: `train_step(step)` up to `max_steps`, each followed by `periodic(step, force)`,
    where `force` asks for a checkpoint now (a stop, SIGUSR1, the last step). Returns (step reached, preempted)."""
    t0 = time.time()
    while step < cadence.max_steps:
        train_step(step)
        step += 1
        stop, preempted, checkpoint_now = agree_requests(acc, cadence, request, step, t0)
        periodic(step, stop or checkpoint_now or step == cadence.max_steps)
        if stop:
            return step, preempted
    return step, False


# -------------------------------------------------------------------------------------------------- losses
class LossWindow:
    """Per-step losses and gradient norms since the last log line, left on the device. They are reduced across
    processes and checked for NaN only at log, sample and checkpoint steps, so no other step waits for the device
    or the other ranks. A clock gives img/s over the window, without the time spent on grids and checkpoints."""

    def __init__(self, acc, step: int, output_dir: str):
        self.acc, self.output_dir = acc, output_dir
        self.clear(step)

    def append(self, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        self.losses.append(loss.detach().float())
        if grad_norm is not None:
            self.norms.append(grad_norm.detach().float())

    def reduce(self) -> list[float]:
        """The mean over processes of each pending step's loss; FloatingPointError naming the first bad step."""
        if not self.losses:
            return []
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


def write_log(acc, output_dir: str, step: int, logs: dict) -> None:
    """One log line to the trackers and, on the main process, to output_dir/losses.jsonl."""
    acc.log(logs, step=step)
    if acc.is_main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(output_dir) / "losses.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **logs}) + "\n")


# -------------------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Resumable checkpoints under output_dir/checkpoints/checkpoint-<step>, written to `.tmp` then renamed.

    Accelerate's automatic naming (`ProjectConfiguration(automatic_checkpoint_naming, total_limit)`) is not used:
    it deletes the oldest checkpoint before the new one is written, writes in place, and numbers checkpoints by
    save count rather than step, so a crash mid-save could leave no complete checkpoint.

    `trainer_state.json` records the step, the config, the number of processes and `extra` (the batch plan): a run
    resumed on another number of processes would see other data in another order, so it is refused."""

    def __init__(self, accelerator, cfg, extra: dict | None = None):
        self.acc, self.cfg, self.extra = accelerator, cfg, extra or {}
        self.root = Path(cfg.output_dir) / "checkpoints"

    def save(self, step: int, ema, phema=None) -> Path:
        final = self.root / f"checkpoint-{step}"
        tmp = final.with_name(final.name + ".tmp")
        self.acc.save_state(str(tmp))  # every rank writes its own RNG file; the main process writes the rest
        if self.acc.is_main_process:
            save_file({f"{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)},
                      str(tmp / "ema.safetensors"))
            state = {"step": step, "ema_optimization_step": ema.optimization_step,
                     "config": dataclasses.asdict(self.cfg), "num_processes": self.acc.num_processes, **self.extra}
            if phema is not None:
                save_file(phema.state_dict(), str(tmp / "posthoc_ema.safetensors"))
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            replace_dir(tmp, final)
            for old in self.list()[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return final

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first (a `.tmp` left by a crash is ignored)."""
        done = [p for p in self.root.glob("checkpoint-*")
                if p.suffix != ".tmp" and (p / "trainer_state.json").is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def load(self, which: str, ema, phema=None) -> int:
        """Restore a checkpoint and return its step; 0 (nothing restored) for 'auto' without a checkpoint. `ema` is
        None on processes that keep no EMA."""
        path = self.resolve(which)
        if path is None:
            self.acc.print(f"--resume auto: no checkpoint under {self.root} yet; starting from step 0")
            return 0
        state = json.loads((path / "trainer_state.json").read_text())
        check_resumed_schedule(state.get("config", {}), self.cfg, path)
        check_resumed_layout(state, path, self.acc.num_processes, self.extra)
        self.acc.load_state(str(path))
        if ema is not None:
            shadow = load_file(str(path / "ema.safetensors"))
            for i, p in enumerate(ema.shadow_params):
                p.data.copy_(shadow[str(i)])
            ema.optimization_step = state["ema_optimization_step"]
        if phema is not None:
            if not (path / "posthoc_ema.safetensors").is_file():
                raise ValueError(f"--resume {path}: the checkpoint holds no post-hoc EMA (its run had no "
                                 "--posthoc-ema); resume without it, or start a new stint with --init-from")
            phema.load_state_dict(load_file(str(path / "posthoc_ema.safetensors")))
        self.acc.print(f"resumed from {path} at step {state['step']}")
        return state["step"]

    def resolve(self, which: str) -> Path | None:
        """The checkpoint `--resume` names: a directory, or the latest ('latest' needs one, 'auto' may find none)."""
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


def check_resumed_layout(state: dict, path: Path, num_processes: int, extra: dict) -> None:
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


def check_resumed_schedule(saved: dict, cfg, path: Path) -> None:
    """A decaying LR is fit to --max-steps, and Accelerate restores only the scheduler's step count: resuming under
    another schedule or budget would make the LR jump at the resume point instead of continuing the curve."""
    was = {"lr_schedule": saved.get("lr_schedule", "constant"), "max_steps": saved.get("max_steps", cfg.max_steps)}
    if was["lr_schedule"] == cfg.lr_schedule == "constant":
        return  # a constant LR has no curve to break: extending --max-steps is how a run is lengthened
    changed = [f"--{k.replace('_', '-')} {was[k]} -> {getattr(cfg, k)}" for k in was if was[k] != getattr(cfg, k)]
    if changed:
        raise ValueError(f"--resume {path}: {', '.join(changed)} would change the LR schedule mid-run. Resume with "
                         f"the checkpoint's settings, or start a new stint from its weights with --init-from.")
